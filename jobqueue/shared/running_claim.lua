-- Claim a running place for a job of a tenant under its quota (jobqueue/shared/running.py).
-- KEYS[1]: the tenant's running set (member a job id, score when its worker last held it).
-- ARGV[1]: now; ARGV[2]: entries scored at or before this are stale (their worker is gone);
-- ARGV[3]: the quota; ARGV[4]: the job id; ARGV[5]: the key's expiry (s).
-- Returns {1, running} when the job holds a place (it already did: counted once), {0, running}
-- when the tenant is at its quota.
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[2])
if redis.call('ZSCORE', KEYS[1], ARGV[4]) then
  redis.call('ZADD', KEYS[1], ARGV[1], ARGV[4])
  return {1, redis.call('ZCARD', KEYS[1])}
end
local running = redis.call('ZCARD', KEYS[1])
if running >= tonumber(ARGV[3]) then return {0, running} end
redis.call('ZADD', KEYS[1], ARGV[1], ARGV[4])
redis.call('EXPIRE', KEYS[1], math.floor(tonumber(ARGV[5])))
return {1, running + 1}
