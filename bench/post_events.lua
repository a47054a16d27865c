-- wrk script: POST unique Brevo events, count what the receiver says, print one result line.
--
-- wrk <options> -s post_events.lua <url> -- <path> <token> <batch> <tag> <base_ts> <p0> <p1> <p2>
--
-- p0, p1, p2 are the event JSON cut at the message-id and the ts_epoch (bench_events.py):
-- every event gets its own message-id, so nothing hits the dedup path. Each wrk thread has
-- its own Lua state; setup() gives each a number so their message-ids never collide.

local threads = {}

function setup(thread)
   thread:set("tid", #threads)
   table.insert(threads, thread)
end

function init(args)
   path, token, batch, tag = args[1], args[2], tonumber(args[3]), args[4]
   base_ts = tonumber(args[5])
   p0, p1, p2 = args[6], args[7], args[8]
   headers = { ["Content-Type"] = "application/json", ["Authorization"] = "Bearer " .. token }
   counter = 0
   stored, duplicates, bad = 0, 0, 0
end

function request()
   counter = counter + 1
   local prefix = "bench." .. tag .. "." .. tid .. "." .. counter .. "."
   local ts = string.format("%d", base_ts + counter)
   local body
   if batch == 1 then
      body = p0 .. prefix .. "1" .. p1 .. ts .. p2
   else
      local events = {}
      for i = 1, batch do
         events[i] = p0 .. prefix .. i .. p1 .. ts .. p2
      end
      body = "[" .. table.concat(events, ",") .. "]"
   end
   return wrk.format("POST", path, headers, body)
end

function response(status, headers, body)
   if status ~= 200 then
      bad = bad + 1
      return
   end
   -- The receiver answers {"received":n,"stored":n,"duplicates":n}; the bare app does not.
   local s = string.match(body, '"stored":(%d+)')
   if s then
      stored = stored + tonumber(s)
      duplicates = duplicates + tonumber(string.match(body, '"duplicates":(%d+)') or "0")
   end
end

function done(summary, latency, requests)
   local s, d, b = 0, 0, 0
   for _, thread in ipairs(threads) do
      s = s + thread:get("stored")
      d = d + thread:get("duplicates")
      b = b + thread:get("bad")
   end
   local e = summary.errors
   -- Latencies are in microseconds. One line, parsed by loadgen_wrk.py.
   io.write(string.format(
      "WRK_RESULT requests=%d duration_us=%d bytes=%d p50=%d p90=%d p99=%d max=%d "
         .. "connect=%d read=%d write=%d status=%d timeout=%d stored=%d duplicates=%d bad=%d\n",
      summary.requests, summary.duration, summary.bytes,
      latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max,
      e.connect, e.read, e.write, e.status, e.timeout, s, d, b))
end
