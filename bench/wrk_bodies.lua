-- wrk script for bench/wrk.py: POSTs the JSON bodies of the file named by BODIES, one per line,
-- each once, in order, with the headers given by -H; done() prints one JSON line of figures.
local bodies = {}
local next_body = 0

init = function(args)
  for line in io.lines(os.getenv("BODIES")) do
    bodies[#bodies + 1] = line
  end
  -- wrk.headers holds -H's headers; wrk.format uses it when given none.
  wrk.headers["Content-Type"] = "application/json"
end

request = function()
  next_body = next_body + 1
  -- Past the end the last body repeats; bench/wrk.py reports the run as too short a file.
  local body = bodies[math.min(next_body, #bodies)]
  return wrk.format("POST", nil, nil, body)
end

done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '{"requests": %d, "duration_s": %.6f, "failed": %d, "e2e_ms_p50": %.3f, "e2e_ms_p99": %.3f}\n',
    summary.requests, summary.duration / 1e6, e.connect + e.read + e.write + e.status + e.timeout,
    latency:percentile(50) / 1000, latency:percentile(99) / 1000))
end
