-- ARGV[6]: how many names to list at most. Returns {count, names}.
local all = redis.call('HKEYS', names)
local count = #all
local max = tonumber(ARGV[6])
table.sort(all)
local listed = {}
for i = 1, math.min(count, max) do listed[i] = all[i] end
return {count, listed}
