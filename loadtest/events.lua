-- wrk script: POST /v1/events, NDJSON bodies of LT_BATCH events (16 bodies
-- prepared up front with a fixed seed, cycled).
local users = tonumber(os.getenv("LT_USERS") or "10000")
local items = tonumber(os.getenv("LT_ITEMS") or "20000")
local batch = tonumber(os.getenv("LT_BATCH") or "100")
local delay_ms = tonumber(os.getenv("LT_DELAY_MS") or "0")
math.randomseed(2)
local bodies = {}
for b = 1, 16 do
  local lines = {}
  for i = 1, batch do
    lines[i] = string.format('{"user":"u%d","item":"i%d","label":%d}',
      math.random(0, users - 1), math.random(0, items - 1), math.random(0, 1))
  end
  bodies[b] = table.concat(lines, "\n")
end
local n = 0
request = function()
  n = n + 1
  return wrk.format("POST", "/v1/events", {["Content-Type"] = "application/x-ndjson"},
                    bodies[(n % 16) + 1])
end
if delay_ms > 0 then
  delay = function() return delay_ms end
end
-- the RESULT line, from report.lua beside this script
dofile((debug.getinfo(1, "S").source:match("^@(.*/)") or "./") .. "report.lua")
