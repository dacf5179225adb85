-- POST of a webhook-sized JSON payload (an event like DodoDB sends) to $DODO_PATH:
-- measures how fast the webhook receiver alone answers (loadtest/webhooks).
local path = os.getenv("DODO_PATH") or "/hook"
local payload = '{"id":"evt_1","key":"k1","event":"update","old_value":null,"new_value":'
  .. (os.getenv("DODO_BODY") or '{"id":1234}') .. ',"version":1,"timestamp":"2026-01-01T00:00:00Z"}'
local req
function init(args)
  req = wrk.format("POST", path, { ["Content-Type"] = "application/json" }, payload)
end
function request()
  return req
end
