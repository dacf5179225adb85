-- Shared by the scenario scripts (loaded with dofile; wrk runs with this directory as cwd).
-- Requests are built once per thread in init(), so request() is a table lookup and wrk
-- spends its core on I/O, not on formatting strings (it must out-run the server).

-- Settings come from the environment, set by loadtest/lib/*.py.
KEYS  = tonumber(os.getenv("DODO_KEYS") or "100000")   -- keys k0 .. k<KEYS-1>
BODY  = os.getenv("DODO_BODY") or
  '{"id":1234,"name":"dodo bird","tags":["extinct","flightless"],"weight_kg":10.6,"island":"Mauritius"}'
PREFIX = os.getenv("DODO_PREFIX") or "/kv/k"
QUERY = os.getenv("DODO_GET_QUERY") or ""   -- appended to GETs, e.g. "?consistency=stale"
PUT_HEADERS = { ["Content-Type"] = "application/json" }

-- Give each thread its own id (setup() runs in the main Lua state, once per thread).
local next_id = 0
function setup(thread)
  thread:set("thread_id", next_id)
  next_id = next_id + 1
end

-- Seed each thread differently, or every thread would walk the same key sequence.
function seed()
  math.randomseed(os.time() * 1000 + (thread_id or 0) * 7919)
  for _ = 1, 10 do math.random() end
end

function build_gets()
  local t = {}
  for i = 0, KEYS - 1 do t[i + 1] = wrk.format("GET", PREFIX .. i .. QUERY) end
  return t
end

function build_puts()
  local t = {}
  for i = 0, KEYS - 1 do t[i + 1] = wrk.format("PUT", PREFIX .. i, PUT_HEADERS, BODY) end
  return t
end
