/*
 * What an external store of aggregate state (Redis, server/features/aggregate_redis.py) needs from the engine,
 * added beside it without touching its arithmetic: describe a batch's events as fixed-size binary records,
 * and seed a scratch engine with the prior state rebuilt from such records, after which the batch runs through
 * Engine::run exactly as in process. The records are replayed into the same Acc code the engine records with,
 * so a bucket rebuilt from its events is the engine's bucket, bit for bit.
 *
 * Record (little-endian): u64 batch id, u32 row (together: unique, so equal events stay distinct members of a
 * sorted set), i64 bucket j, i64 event time t, then per value slot of the group: u8 present, f64 value when
 * the slot holds numbers, u64 hash53 when a distinct aggregate reads it.
 */
#ifndef SKEWLESS_AGG_STORE_H
#define SKEWLESS_AGG_STORE_H

#include <map>

#include "skewless_agg.h"

namespace skl_agg {

static const size_t REC_HEAD = 8 + 4 + 8 + 8;
static const int64_t EXACT_BUCKET = (int64_t)1 << 53;  // bucket numbers are Redis scores (doubles)

static inline size_t record_size(const Group& g) {
    size_t n = REC_HEAD;
    for (const Slot& s : g.slots) n += 1 + (s.number ? 8 : 0) + (s.hashes ? 8 : 0);
    return n;
}

/* One key of one group touched by a batch: its lowest and highest bucket, and its events' records. */
struct StoreKey {
    std::string key;
    int64_t min_b = 0;
    int64_t max_b = 0;
    std::vector<std::pair<int64_t, std::string>> events;  // (bucket, record), row order
};

static inline uint64_t get_u64(const char* p) {
    uint64_t v = 0;
    for (int i = 0; i < 8; i++) v |= (uint64_t)(uint8_t)p[i] << (8 * i);
    return v;
}

/* The batch's keys and event records, per group, in the rows' order; rows with a missing key or time are left
 * out, as Engine::run leaves them out. Throws invalid_argument when a bucket number is not exact as a double. */
static inline void store_describe(Engine& e, const Col* cols, int64_t n_rows, uint64_t batch_id,
                                  std::vector<std::vector<StoreKey>>& out) {
    out.assign(e.groups.size(), std::vector<StoreKey>());
    std::string key, raw;
    for (size_t gi = 0; gi < e.groups.size(); gi++) {
        const Group& g = e.groups[gi];
        bool usable = cols[g.time_col].present != 0;
        for (int c : g.key_cols) usable = usable && cols[c].present != 0;
        if (!usable) continue;
        std::unordered_map<std::string, size_t> index;
        std::vector<StoreKey>& keys = out[gi];
        const size_t size = record_size(g);
        for (int64_t i = 0; i < n_rows; i++) {
            int64_t t, b;
            if (!row_key_time(g, cols, i, key, t, b)) continue;
            if (b >= EXACT_BUCKET || b <= -EXACT_BUCKET)
                throw std::invalid_argument("event time's bucket number is beyond 2^53: too fine a bucket for the "
                                            "Redis store");
            auto found = index.find(key);
            StoreKey* sk;
            if (found == index.end()) {
                index.emplace(key, keys.size());
                keys.emplace_back();
                sk = &keys.back();
                sk->key = key;
                sk->min_b = sk->max_b = b;
            } else {
                sk = &keys[found->second];
                sk->min_b = std::min(sk->min_b, b);
                sk->max_b = std::max(sk->max_b, b);
            }
            std::string rec;
            rec.reserve(size);
            put_u64(rec, batch_id);
            put_u32(rec, (uint32_t)i);
            put_u64(rec, (uint64_t)b);
            put_u64(rec, (uint64_t)t);
            for (const Slot& sl : g.slots) {
                bool present = false;
                double x = 0.0;
                uint64_t h = 0;
                if (sl.col >= 0 && cols[sl.col].present) {
                    const Col& vc = cols[sl.col];
                    if (sl.number) {
                        bool missing;
                        x = Engine::value_number(vc, i, &missing);
                        present = !missing;
                        if (x == 0) x = 0.0;
                        if (present && sl.hashes) {
                            raw.clear();
                            append_part(raw, vc, i);
                            h = hash53(raw);
                        }
                    } else {
                        raw.clear();
                        present = append_part(raw, vc, i);
                        if (present && sl.hashes) h = hash53(raw);
                    }
                }
                rec.push_back(present ? 1 : 0);
                if (sl.number) put_f64(rec, present ? x : 0.0);
                if (sl.hashes) put_u64(rec, h);
            }
            sk->events.emplace_back(b, std::move(rec));
        }
    }
}

/* Empty every group's state (a scratch engine is reused batch after batch). */
static inline void store_reset(Engine& e) {
    std::lock_guard<std::mutex> lock(e.mu);
    for (Group& g : e.groups) g.st = GroupState();
    e.ages.clear();
    e.n_keys = 0;
    e.evicted = 0;
}

/* Set a group's newest bucket G as a store holds it (no late rule: the store's G is the truth). */
static inline void store_seed_watermark(Engine& e, int gi, int64_t g) {
    GroupState& st = e.groups.at(gi).st;
    if (!st.has_g || g > st.g) {
        st.g = g;
        st.has_g = true;
    }
}

/* Rebuild one key's buckets from its event records (top = the newest bucket among them), without the late
 * rule: the store recorded them. Throws invalid_argument on a record of another layout. */
static inline void store_seed_key(Engine& e, int gi, const std::string& key, const char* const* recs,
                                  const size_t* lens, size_t n) {
    if (n == 0) return;
    Group& g = e.groups.at(gi);
    const size_t size = record_size(g);
    for (size_t r = 0; r < n; r++)
        if (lens[r] != size) throw std::invalid_argument("the aggregate store holds a record of another layout");
    int64_t top = (int64_t)get_u64(recs[0] + 12);
    for (size_t r = 1; r < n; r++) top = std::max(top, (int64_t)get_u64(recs[r] + 12));
    auto it = g.st.keys.find(key);
    if (it == g.st.keys.end()) {
        it = g.st.keys.emplace(key, KeyState()).first;
        it->second.top = top;
        e.n_keys += 1;
    } else if (top > it->second.top) {
        it->second.top = top;
    }
    KeyState& ks = it->second;
    sl_fp_env env = sl_fp_env_enter();  // fixed_point() rounds under the default environment
    for (size_t r = 0; r < n; r++) {
        const char* p = recs[r];
        int64_t j = (int64_t)get_u64(p + 12);
        int64_t t = (int64_t)get_u64(p + 20);
        auto pos = std::lower_bound(ks.buckets.begin(), ks.buckets.end(), j,
                                    [](const Bucket& bk, int64_t v) { return bk.j < v; });
        if (pos == ks.buckets.end() || pos->j != j) {
            Bucket nb;
            nb.j = j;
            nb.slots.resize(g.slots.size());
            pos = ks.buckets.insert(pos, std::move(nb));
        }
        p += REC_HEAD;
        for (size_t s = 0; s < g.slots.size(); s++) {
            const Slot& sl = g.slots[s];
            Acc& acc = pos->slots[s];
            bool present = *p++ != 0;
            double x = 0.0;
            uint64_t h = 0;
            if (sl.number) {
                uint64_t u = get_u64(p);
                memcpy(&x, &u, 8);
                p += 8;
            }
            if (sl.hashes) {
                h = get_u64(p);
                p += 8;
            }
            // the engine's record(), given the values it computed: count, then the value's accumulators
            acc.count += 1;
            if (!present) continue;
            if (sl.number) {
                acc.add_number(t, x);
            } else {
                acc.n += 1;
            }
            if (sl.hashes) acc.add_hash(h);
        }
    }
    sl_fp_env_leave(env);
}

}  // namespace skl_agg

#endif
