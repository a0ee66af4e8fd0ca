-- Admit jobs into their services' queued-jobs indexes, all or none (jobqueue/shared/queued.py).
-- KEYS: one index (sorted set) per service.
-- ARGV[1]: now (Unix time); ARGV[2]: expiry (s) of the results, beyond which an entry is stale;
-- ARGV[3]: JSON list, per key, of [cap (-1: none), [job ids...]].
-- Returns {0, 0} when admitted, else {i, queued}: key i (1-based) would go over its cap.
local now = tonumber(ARGV[1])
local expires = tonumber(ARGV[2])
local plan = cjson.decode(ARGV[3])
for i, key in ipairs(KEYS) do
  redis.call('ZREMRANGEBYSCORE', key, '-inf', now - expires)
  local cap = tonumber(plan[i][1])
  if cap >= 0 then
    local queued = redis.call('ZCARD', key)
    local new = 0
    for _, id in ipairs(plan[i][2]) do
      if not redis.call('ZSCORE', key, id) then new = new + 1 end
    end
    if new > 0 and queued + new > cap then return {i, queued} end
  end
end
for i, key in ipairs(KEYS) do
  for _, id in ipairs(plan[i][2]) do redis.call('ZADD', key, 'NX', now, id) end
  redis.call('EXPIRE', key, math.floor(expires))
end
return {0, 0}
