-- Preloader: PUTs k<FIRST> .. k<FIRST+KEYS-1> once each, split into contiguous ranges
-- over wrk's threads, then prints "preload-done <thread>" and stops its thread.
-- wrk itself only exits after -d or SIGINT, so loadtest/lib/dodo.py waits for one
-- done line per thread and then sends SIGINT.
--
-- A thread is done when it has seen one 201 Created per key of its range: counting
-- any response could stop it while one of its PUTs is still in flight, because after
-- its range is used up its connections keep re-PUTting its last key (a 200 overwrite).
-- So the server must be fresh (every key new). With DODO_PRELOAD_OK=2xx (for servers
-- that never answer 201) any 2xx counts. A 3xx/4xx/5xx prints "preload-error STATUS"
-- (once per thread) so the caller can stop at once instead of waiting for a key that
-- will never be retried.
dofile("common.lua")
local FIRST = tonumber(os.getenv("DODO_FIRST") or "0")
local THREADS = tonumber(os.getenv("DODO_THREADS") or "1")
local ANY_2XX = os.getenv("DODO_PRELOAD_OK") == "2xx"
local lo, hi, nxt, created, bad, finished, probed

function init(args)
  -- Even split; the caller keeps THREADS <= KEYS, so no range is empty.
  lo = FIRST + math.floor(thread_id * KEYS / THREADS)
  hi = FIRST + math.floor((thread_id + 1) * KEYS / THREADS) - 1   -- inclusive
  nxt, created, bad, finished = lo, 0, 0, false
  -- wrk calls thread 0's request() once before the run to check the script, and
  -- drops what it returns; that call must not use up key lo. (Were there no such
  -- call, lo would be sent twice: one 201 and one harmless 200.)
  probed = thread_id ~= 0
end

function request()
  local i = nxt
  if not probed then
    probed = true
  elseif i < hi then
    nxt = i + 1
  end
  return wrk.format("PUT", PREFIX .. i, PUT_HEADERS, BODY)
end

function response(status, headers, body)
  if finished then return end
  if status == 201 or (ANY_2XX and status >= 200 and status < 300) then
    created = created + 1
  elseif status >= 300 then
    bad = bad + 1
    if bad == 1 then
      io.write("preload-error ", status, " ", (body:sub(1, 200):gsub("\n", " ")), "\n"); io.stdout:flush()
    end
  end
  if created >= hi - lo + 1 then
    finished = true
    io.write("preload-done ", thread_id, " ", created, " ", bad, "\n"); io.stdout:flush()
    wrk.thread:stop()
  end
end
