-- wrk script: writes k0 .. k(BENCH_KEYS-1) once each, in order, then stops.
-- Run with one thread (-t1) so the counter covers every key.
package.path = (os.getenv("BENCH_WRK_DIR") or "bench/wrk") .. "/?.lua;" .. package.path
local common = require("common")
done = common.done
local next_key = 0
local answered = 0
request = function()
   local key = "k" .. (next_key % common.keys)
   next_key = next_key + 1
   return common.write(key)
end
response = function(status, headers, body)
   answered = answered + 1
   if answered >= common.keys + 64 then
      wrk.thread:stop()
   end
end
