-- POST /txn with DODO_TXN_PUTS (default 100) puts of the ~100-byte JSON value
-- ($DODO_BODY) to distinct random keys among k0 .. k<DODO_KEYS-1> (overwrites after
-- the preload). 256 bodies are built per thread in init(), so request() is a lookup.
dofile("common.lua")
local PUTS = tonumber(os.getenv("DODO_TXN_PUTS") or "100")
local bodies
function init(args)
  seed()
  bodies = {}
  for b = 1, 256 do
    local seen, ops = {}, {}
    while #ops < PUTS do
      local k = math.random(KEYS) - 1
      if not seen[k] then
        seen[k] = true
        ops[#ops + 1] = '{"op":"put","key":"k' .. k .. '","value":' .. BODY .. '}'
      end
    end
    local body = '{"success":[' .. table.concat(ops, ",") .. ']}'
    bodies[b] = wrk.format("POST", "/txn", PUT_HEADERS, body)
  end
end
function request()
  return bodies[math.random(#bodies)]
end
