-- wrk script: GET /v1/recommend?k=10 for random users of the seeded population.
local users = tonumber(os.getenv("LT_USERS") or "10000")
local items = tonumber(os.getenv("LT_ITEMS") or "20000")
math.randomseed(1)
request = function()
  return wrk.format("GET", string.format("/v1/recommend?user=u%d&k=10",
                    math.random(0, users - 1)))
end
done = function(summary, latency, requests)
  io.write(string.format("RESULT requests=%d seconds=%.3f p50_ms=%.3f p99_ms=%.3f errors=%d\n",
    summary.requests, summary.duration / 1e6, latency:percentile(50) / 1000,
    latency:percentile(99) / 1000, summary.errors.status + summary.errors.connect +
    summary.errors.read + summary.errors.write + summary.errors.timeout))
end
