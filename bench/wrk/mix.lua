-- wrk script: 90% linearizable reads, 10% writes, random keys (see common.lua).
package.path = (os.getenv("BENCH_WRK_DIR") or "bench/wrk") .. "/?.lua;" .. package.path
local common = require("common")
setup = common.setup
init = common.init
done = common.done
request = function()
   if math.random(1, 10) == 1 then
      return common.write(common.key())
   end
   return common.read(common.key())
end
