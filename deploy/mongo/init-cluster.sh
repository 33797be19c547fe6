#!/usr/bin/env bash
# Run once by the compose file's mongo-init service: initiates the config server and
# shard replica sets, adds the shards to the cluster, then shards profilestore's
# collections per its plan (shard-collections.js, printed by
# `profilestore documents shard-plan`). Each step is skipped when already done, so a
# restart of the service changes nothing.
set -euo pipefail

initiate() {  # initiate HOST:PORT SET MEMBERS [configsvr]
    local host=$1 set=$2 members=$3 configsvr=${4:-false}
    mongosh --quiet "mongodb://$host/?directConnection=true" --eval "
        try { rs.status(); print('$set: already initiated'); }
        catch (e) {
            const members = '$members'.split(',').map((h, i) => ({_id: i, host: h}));
            rs.initiate({_id: '$set', configsvr: $configsvr, members: members});
            print('$set: initiated');
        }"
}

initiate cfg1:27019 cfg cfg1:27019,cfg2:27019,cfg3:27019 true
initiate shard1a:27018 shard1 shard1a:27018,shard1b:27018,shard1c:27018
initiate shard2a:27018 shard2 shard2a:27018,shard2b:27018,shard2c:27018

# Wait for mongos to see the config servers' primary, then add the shards (idempotent).
until mongosh --quiet mongodb://mongos:27017 --eval "db.adminCommand({listShards: 1}).ok" >/dev/null 2>&1; do
    sleep 2
done
mongosh --quiet mongodb://mongos:27017 --eval '
    const present = db.adminCommand({listShards: 1}).shards.map(s => s._id);
    for (const [name, hosts] of [
        ["shard1", "shard1/shard1a:27018,shard1b:27018,shard1c:27018"],
        ["shard2", "shard2/shard2a:27018,shard2b:27018,shard2c:27018"],
    ]) {
        if (!present.includes(name)) { sh.addShard(hosts); print(name + ": added"); }
    }'

# Shard the collections, unless the plan was applied before.
if mongosh --quiet mongodb://mongos:27017/profilestore --eval \
    'quit(db.getSiblingDB("config").collections.countDocuments({_id: "profilestore.profiles"}) ? 0 : 1)'; then
    echo "profilestore: already sharded"
else
    mongosh --quiet mongodb://mongos:27017 /deploy/mongo/shard-collections.js
fi
