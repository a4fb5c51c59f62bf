-- The cache-hit read mix for wrk: every "path<TAB>authorization" line of the file named by
-- the HITS environment variable, in turn (each thread starts at a different line), with
-- GHL's Version header. Warm every cache with it first so every request is a hit.
local reqs = {}
local n, i = 0, 0
local threads = 0

function setup(thread)
  threads = threads + 1
  thread:set("id", threads)
end

function init(args)
  local f = assert(io.open(os.getenv("HITS"), "r"))
  for line in f:lines() do
    local path, auth = line:match("^(%S+)\t(.+)$")
    if path then
      n = n + 1
      reqs[n] = wrk.format("GET", path, { ["Authorization"] = auth, ["Version"] = "2021-07-28" })
    end
  end
  f:close()
  i = ((id or 1) - 1) * 97 % n
end

function request()
  i = i % n + 1
  return reqs[i]
end

-- With PCT_OUT set, write the latency distribution ("percentile microseconds" lines) for
-- the plots.
function done(summary, latency, requests)
  local name = os.getenv("PCT_OUT")
  if not name then return end
  local f = assert(io.open(name, "w"))
  for _, p in ipairs({ 1, 10, 25, 50, 75, 90, 95, 99, 99.5, 99.9, 99.99 }) do
    f:write(string.format("%g %d\n", p, latency:percentile(p)))
  end
  f:close()
end
