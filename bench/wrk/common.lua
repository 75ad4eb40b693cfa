-- Shared by every bench/wrk script: the system under test (BENCH_SYSTEM = mmapd,
-- etcd or ceiling), random keys over BENCH_KEYS keys, 100-byte values, and a
-- one-line machine-readable summary printed by done().
local M = {}

M.system = os.getenv("BENCH_SYSTEM") or "mmapd"
M.keys = tonumber(os.getenv("BENCH_KEYS") or "10000")
M.value = string.rep("v", 100)
M.body = "value=" .. M.value
M.form = { ["Content-Type"] = "application/x-www-form-urlencoded" }

function M.key()
   return "k" .. math.random(0, M.keys - 1)
end

-- mmapd's original write route, etcd's v2 write; both take the form field `value`.
function M.write(key)
   if M.system == "etcd" then
      return wrk.format("PUT", "/v2/keys/" .. key, M.form, M.body)
   end
   return wrk.format("POST", "/set/" .. key, M.form, M.body)
end

-- Linearizable read: mmapd's default consistency, etcd's quorum read.
function M.read(key)
   if M.system == "etcd" then
      return wrk.format("GET", "/v2/keys/" .. key .. "?quorum=true")
   end
   return wrk.format("GET", "/v1/kv/" .. key)
end

-- Local read: the node's own copy.
function M.stale_read(key)
   if M.system == "etcd" then
      return wrk.format("GET", "/v2/keys/" .. key)
   end
   return wrk.format("GET", "/v1/kv/" .. key .. "?consistency=stale")
end

local thread_count = 0
function M.setup(thread)
   thread_count = thread_count + 1
   thread:set("thread_id", thread_count)
end

function M.init()
   math.randomseed(os.time() * 1000 + (thread_id or 0) * 7919)
end

-- One line for bench/table.py: requests/s, latency percentiles in microseconds, errors;
-- `extra`, if given, is appended (more `name=value` fields).
function M.done(summary, latency, requests, extra)
   local seconds = summary.duration / 1e6
   local errors = summary.errors
   io.write(string.format(
      "BENCH_RESULT rps=%.1f p50_us=%d p99_us=%d requests=%d non2xx=%d socket_errors=%d%s\n",
      summary.requests / seconds, latency:percentile(50), latency:percentile(99), summary.requests,
      errors.status, errors.connect + errors.read + errors.write + errors.timeout,
      extra and (" " .. extra) or ""))
end

return M
