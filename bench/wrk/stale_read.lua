-- wrk script: stale_read of a random key, 100-byte values (see common.lua).
package.path = (os.getenv("BENCH_WRK_DIR") or "bench/wrk") .. "/?.lua;" .. package.path
local common = require("common")
setup = common.setup
init = common.init
done = common.done
request = function() return common.stale_read(common.key()) end
