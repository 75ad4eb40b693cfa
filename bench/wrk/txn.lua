-- wrk script: a transaction on a random key (see common.lua for the keys and values):
-- "update if it exists", the compare-and-put shape: compare the key's version > 0, put
-- a 100-byte value on success, get the key on failure. Over the 10,000 prefilled keys
-- every transaction succeeds (no two requests depend on each other's outcome; a true
-- CAS chain on mod_revision needs the previous answer, which wrk cannot pair with a
-- connection).
--   mmapd: POST /v1/txn (JSON, keys and values as text)
--   etcd:  POST /v3/kv/txn (the v3 JSON gateway; keys and values base64)
-- A 2xx answer without `"succeeded":true` is counted, and done() prints it as
-- `not_succeeded=` on the BENCH_RESULT line.
package.path = (os.getenv("BENCH_WRK_DIR") or "bench/wrk") .. "/?.lua;" .. package.path
local common = require("common")

local alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
local function base64(text)
   local out = {}
   for i = 1, #text, 3 do
      local a, b, c = text:byte(i, i + 2)
      local n = a * 65536 + (b or 0) * 256 + (c or 0)
      local s1 = math.floor(n / 262144) % 64
      local s2 = math.floor(n / 4096) % 64
      local s3 = math.floor(n / 64) % 64
      local s4 = n % 64
      out[#out + 1] = alphabet:sub(s1 + 1, s1 + 1) .. alphabet:sub(s2 + 1, s2 + 1)
         .. (b and alphabet:sub(s3 + 1, s3 + 1) or "=") .. (c and alphabet:sub(s4 + 1, s4 + 1) or "=")
   end
   return table.concat(out)
end

local json = { ["Content-Type"] = "application/json" }
local value64 = base64(common.value)

local function txn(key)
   if common.system == "etcd" then
      local k = base64(key)
      return wrk.format("POST", "/v3/kv/txn", json,
         '{"compare":[{"key":"' .. k .. '","target":"VERSION","result":"GREATER","version":"0"}],'
         .. '"success":[{"request_put":{"key":"' .. k .. '","value":"' .. value64 .. '"}}],'
         .. '"failure":[{"request_range":{"key":"' .. k .. '"}}]}')
   end
   return wrk.format("POST", "/v1/txn", json,
      '{"compare":[{"key":"' .. key .. '","target":"version","op":">","value":0}],'
      .. '"success":[{"op":"put","key":"' .. key .. '","value":"' .. common.value .. '"}],'
      .. '"failure":[{"op":"get","key":"' .. key .. '"}]}')
end

local threads = {}
setup = function(thread)
   common.setup(thread)
   table.insert(threads, thread)
end
init = function(args)
   common.init(args)
   not_succeeded = 0
end
request = function() return txn(common.key()) end
response = function(status, headers, body)
   if status >= 200 and status < 300 and not body:find('"succeeded":true', 1, true) then
      not_succeeded = not_succeeded + 1
   end
end
done = function(summary, latency, requests)
   local missed = 0
   for _, thread in ipairs(threads) do
      missed = missed + (thread:get("not_succeeded") or 0)
   end
   common.done(summary, latency, requests, "not_succeeded=" .. missed)
end
