-- wrk script: write of a random key of BENCH_KEYS with a value of BENCH_VALUE_BYTES
-- bytes (bench/run's BENCH_LARGE section: 64 KiB and 1 MiB values).
package.path = (os.getenv("BENCH_WRK_DIR") or "bench/wrk") .. "/?.lua;" .. package.path
local common = require("common")
common.body = "value=" .. string.rep("v", tonumber(os.getenv("BENCH_VALUE_BYTES") or "65536"))
setup = common.setup
init = common.init
done = common.done
request = function() return common.write(common.key()) end
