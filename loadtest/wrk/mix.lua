-- 90% GET / 10% PUT, both on uniformly random keys among k0 .. k<DODO_KEYS-1>.
dofile("common.lua")
local gets, puts
function init(args)
  seed()
  gets = build_gets()
  puts = build_puts()
end
function request()
  if math.random(10) == 1 then
    return puts[math.random(KEYS)]
  end
  return gets[math.random(KEYS)]
end
