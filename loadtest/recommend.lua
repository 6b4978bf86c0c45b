-- wrk script: GET /v1/recommend?k=10 for random users of the seeded population.
local users = tonumber(os.getenv("LT_USERS") or "10000")
local items = tonumber(os.getenv("LT_ITEMS") or "20000")
math.randomseed(1)
request = function()
  return wrk.format("GET", string.format("/v1/recommend?user=u%d&k=10",
                    math.random(0, users - 1)))
end
-- the RESULT line, from report.lua beside this script
dofile((debug.getinfo(1, "S").source:match("^@(.*/)") or "./") .. "report.lua")
