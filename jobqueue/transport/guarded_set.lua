-- Store a result record unless a SUCCESS record is there, and publish it (jobqueue.transport.internals).
-- The guard of Celery's RedisBackend._store_result (a read, then the write), made atomic and one round trip.
-- KEYS[1]: a result key; ARGV[1]: the encoded record (JSON); ARGV[2]: expiry in s (0: none).
-- Optional KEYS[2], KEYS[3], ARGV[3]: kombu's unacked index and hash and a delivery tag, removed once the
-- record is stored or a SUCCESS record is kept, never when the write failed (jobqueue.transport.early_ack).
-- Returns 1 when stored, 0 when a SUCCESS record was kept.
local function ack()
  if KEYS[3] then
    redis.call('ZREM', KEYS[2], ARGV[3])
    redis.call('HDEL', KEYS[3], ARGV[3])
  end
end
local current = redis.call('GET', KEYS[1])
if current then
  local ok, record = pcall(cjson.decode, current)
  if ok and type(record) == 'table' and record['status'] == 'SUCCESS' then ack() return 0 end
end
if tonumber(ARGV[2]) > 0 then
  redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
else
  redis.call('SET', KEYS[1], ARGV[1])
end
redis.call('PUBLISH', KEYS[1], ARGV[1])
ack()
return 1
