-- ARGV[7]: how many names to list at most. Returns {count, names}.
local all = {}
for _, value in ipairs(redis.call('HVALS', names)) do
  local name = shown(value)
  -- A value of another format (an older version's) is skipped, not a hole.
  if name then all[#all + 1] = name end
end
local count = #all
local max = tonumber(ARGV[7])
table.sort(all)
local listed = {}
for i = 1, math.min(count, max) do listed[i] = all[i] end
return {count, listed}
