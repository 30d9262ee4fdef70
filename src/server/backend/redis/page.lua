-- ARGV[7]: the highest seq to read, ARGV[8]: the most messages, ARGV[9]:
-- the most bytes of their texts and senders' names (one message at least).
-- Reads the history stream down from ARGV[7], in batches, only as far as
-- the answer goes, plus one entry to tell whether there is more.
-- Returns {more (1 or 0), the messages as published, oldest first}.
local upper = '0-' .. ARGV[7]
local count, bytes = tonumber(ARGV[8]), tonumber(ARGV[9])
local newest, total, more, done = {}, 0, 0, false
while not done do
  local want = math.min(REPLAY_BATCH, count + 1 - #newest)
  local batch = redis.call('XREVRANGE', log, upper, '-', 'COUNT', want)
  for _, entry in ipairs(batch) do
    local event = cjson.decode(entry[2][2])
    total = total + #(event.text or '') + #(event.from or '')
    if #newest >= count or (total > bytes and #newest > 0) then
      more, done = 1, true
      break
    end
    newest[#newest + 1] = entry[2][2]
  end
  if not done and #batch < want then
    done = true
  elseif not done then
    upper = '(' .. batch[#batch][1]
  end
end
local page = {}
for i = #newest, 1, -1 do
  page[#page + 1] = newest[i]
end
return {more, page}
