/*
 * The windowed-aggregate state engine (issue 29), in C++: the semantics of tests/aggregate_reference.py,
 * bit for bit, over kernel columns, without the GIL.
 *
 * Layout: one Engine holds the plan's groups (key inputs, time input, bucket width); a group maps the exact
 * key bytes to the key's visible buckets, and a bucket holds one accumulator (Acc) per value input of the
 * group. Everything that turns events into values lives in Acc (add_number/add_hash, merge, finalize) and in
 * Engine::read / Engine::record, which work on one GroupState (keys -> KeyState, the group's newest bucket).
 * An external store (Redis) plugs in per batch: (1) fetch the prior KeyStates of the keys the batch touches
 * and the group's newest bucket into a GroupState, (2) run the same read/record over the batch's rows against
 * it (prior state + earlier rows of the batch, in order), (3) write back what the rows recorded. The
 * in-process store is that with the GroupState kept in memory, so both agree to the bit.
 *
 * Arithmetic: sums are exact integers in units of 2^-32 (__int128), rounded per value half to even; the
 * int128 -> double conversion is correctly rounded (libgcc's __floattidf) and the division by 2^32 is exact.
 * Callers run this under the IEEE default floating-point environment (skewless_fp.h's guard).
 */
#ifndef SKEWLESS_AGG_H
#define SKEWLESS_AGG_H

#include <stdint.h>
#include <string.h>

#include <algorithm>
#include <limits>
#include <mutex>
#include <set>
#include <stdexcept>
#include <string>
#include <tuple>
#include <unordered_map>
#include <utility>
#include <vector>

#include "skewless_fp.h"

namespace skl_agg {

enum ColKind { CK_F64 = 0, CK_I64 = 1, CK_BOOL = 2, CK_STR32 = 3, CK_STR64 = 4 };
enum Op { OP_COUNT = 0, OP_SUM, OP_MEAN, OP_MIN, OP_MAX, OP_LAST, OP_DISTINCT };

static const size_t K = 256;                 // distinct-count sketch size
static const double SUM_LIMIT = 1099511627776.0;  // 2^40
static const double TWO32 = 4294967296.0;
static const double TWO52 = 4503599627370496.0;
static const double TWO53 = 9007199254740992.0;
static const uint32_t HASH_SEED0 = 0x9747B28Cu, HASH_SEED1 = 0x85EBCA6Bu;
static const int64_t I64_MIN = std::numeric_limits<int64_t>::min();

/* One bound input column (the kernel's column tuple, checked by the Cython layer). */
struct Col {
    int kind;
    int present;                 // 0: the batch has no such column (ingest only)
    const char* values;          // numbers, or string offsets
    const uint8_t* data;         // string bytes
    const uint8_t* valid_bytes;
    const uint8_t* valid_bits;
    int64_t bit_offset;
};

static inline bool col_valid(const Col& c, int64_t i) {
    if (c.valid_bytes != NULL && c.valid_bytes[i] == 0) return false;
    if (c.valid_bits != NULL) {
        int64_t k = i + c.bit_offset;
        return (c.valid_bits[k >> 3] >> (k & 7)) & 1;
    }
    return true;
}

static inline void put_u32(std::string& s, uint32_t v) {
    char b[4];
    for (int i = 0; i < 4; i++) b[i] = (char)(uint8_t)(v >> (8 * i));
    s.append(b, 4);
}
static inline void put_u64(std::string& s, uint64_t v) {
    char b[8];
    for (int i = 0; i < 8; i++) b[i] = (char)(uint8_t)(v >> (8 * i));
    s.append(b, 8);
}
static inline void put_f64(std::string& s, double x) {
    uint64_t u;
    memcpy(&u, &x, 8);
    put_u64(s, u);
}

/* Append the row's bytes of one key/value part as the reference's key_bytes; false when missing. */
static inline bool append_part(std::string& out, const Col& c, int64_t i) {
    if (!col_valid(c, i)) return false;
    switch (c.kind) {
    case CK_F64: {
        double x = ((const double*)c.values)[i];
        if (x != x) return false;
        if (x == 0) x = 0.0;
        put_f64(out, x);
        return true;
    }
    case CK_I64:
        put_u64(out, (uint64_t)((const int64_t*)c.values)[i]);
        return true;
    case CK_BOOL:
        out.push_back(((const uint8_t*)c.values)[i] ? 1 : 0);
        return true;
    case CK_STR32: {
        int64_t a = ((const int32_t*)c.values)[i], b = ((const int32_t*)c.values)[i + 1];
        put_u32(out, (uint32_t)(b - a));
        out.append((const char*)c.data + a, (size_t)(b - a));
        return true;
    }
    default: {
        int64_t a = ((const int64_t*)c.values)[i], b = ((const int64_t*)c.values)[i + 1];
        put_u32(out, (uint32_t)(b - a));
        out.append((const char*)c.data + a, (size_t)(b - a));
        return true;
    }
    }
}

static inline uint64_t hash53(const std::string& raw) {
    const uint8_t* p = (const uint8_t*)raw.data();
    return ((uint64_t)sl_murmur3_32(p, raw.size(), HASH_SEED0) << 21) |
           (uint64_t)(sl_murmur3_32(p, raw.size(), HASH_SEED1) >> 11);
}

/* IEEE total order as an integer (ties of `last`). */
static inline int64_t order_key(double x) {
    int64_t u;
    memcpy(&u, &x, 8);
    return u >= 0 ? u : -(u & std::numeric_limits<int64_t>::max()) - 1;
}

/* x * 2^32 rounded to an integer, ties to even (|x| < 2^40: the product is exact and below 2^72). */
static inline __int128 fixed_point(double x) {
    volatile double y = x * TWO32;
    double r;
    if (y >= TWO52 || y <= -TWO52) {
        r = y;                                  // already an integer
    } else if (y >= 0) {
        volatile double t = y + TWO52;          // rounds to the nearest integer, ties to even
        r = t - TWO52;
    } else {
        volatile double t = -y + TWO52;
        r = -(t - TWO52);
    }
    return (__int128)r;
}

static inline int64_t floor_div(int64_t t, int64_t w) {
    int64_t q = t / w;
    if ((t % w != 0) && (t < 0)) q -= 1;
    return q;
}

static inline int64_t sat_sub(int64_t a, int64_t b) {  // a - b, b >= 0, clamped at INT64_MIN
    return (a < I64_MIN + b) ? I64_MIN : a - b;
}

/* The accumulators of one value input over some events: one bucket, or a merged window. */
struct Acc {
    int64_t count = 0;   // events, with or without a value
    int64_t n = 0;       // events with a value
    int64_t ns = 0;      // values inside the sum's range
    __int128 fsum = 0;   // their exact sum in units of 2^-32
    double mn = __builtin_inf();
    double mx = -__builtin_inf();
    bool has_last = false;
    int64_t last_t = 0;
    int64_t last_ok = 0;
    double last_v = 0.0;
    std::vector<uint64_t> hashes;  // the K smallest hash53 of the values, ascending

    void add_number(int64_t t, double x) {
        if (x == 0) x = 0.0;
        n += 1;
        if (x < SUM_LIMIT && x > -SUM_LIMIT) {
            ns += 1;
            fsum += fixed_point(x);
        }
        if (x < mn) mn = x;
        if (x > mx) mx = x;
        int64_t ok = order_key(x);
        if (!has_last || t > last_t || (t == last_t && ok > last_ok)) {
            has_last = true;
            last_t = t;
            last_ok = ok;
            last_v = x;
        }
    }

    void reset() {
        count = n = ns = 0;
        fsum = 0;
        mn = __builtin_inf();
        mx = -__builtin_inf();
        has_last = false;
        last_t = last_ok = 0;
        last_v = 0.0;
        hashes.clear();
    }

    /* Returns by how many hashes the sketch grew (0 or 1). */
    int add_hash(uint64_t h) {
        auto it = std::lower_bound(hashes.begin(), hashes.end(), h);
        if (it != hashes.end() && *it == h) return 0;
        int grew = 1;
        if (hashes.size() >= K) {
            if (h > hashes.back()) return 0;
            hashes.pop_back();
            grew = 0;
            it = std::lower_bound(hashes.begin(), hashes.end(), h);
        }
        hashes.insert(it, h);
        return grew;
    }

    /* Fold another Acc of the same value input in: the one merge every store uses. */
    void merge(const Acc& o) {
        count += o.count;
        n += o.n;
        ns += o.ns;
        fsum += o.fsum;
        if (o.mn < mn) mn = o.mn;
        if (o.mx > mx) mx = o.mx;
        if (o.has_last && (!has_last || o.last_t > last_t || (o.last_t == last_t && o.last_ok > last_ok))) {
            has_last = true;
            last_t = o.last_t;
            last_ok = o.last_ok;
            last_v = o.last_v;
        }
        if (!o.hashes.empty()) {
            if (hashes.empty()) {
                hashes.assign(o.hashes.begin(), o.hashes.end());
            } else {
                std::vector<uint64_t> u;
                u.reserve(std::min(K, hashes.size() + o.hashes.size()));
                size_t i = 0, j = 0;
                while (u.size() < K && (i < hashes.size() || j < o.hashes.size())) {
                    uint64_t v;
                    if (j >= o.hashes.size() || (i < hashes.size() && hashes[i] < o.hashes[j])) {
                        v = hashes[i++];
                    } else if (i >= hashes.size() || o.hashes[j] < hashes[i]) {
                        v = o.hashes[j++];
                    } else {
                        v = hashes[i++];
                        j++;
                    }
                    u.push_back(v);
                }
                hashes.swap(u);
            }
        }
    }

    size_t heap_bytes() const { return hashes.capacity() * sizeof(uint64_t); }
};

/* The value of one operation over a window's merged Acc (the reference's _finalize). */
static inline double finalize(int op, const Acc& w) {
    switch (op) {
    case OP_COUNT:
        return (double)w.count;
    case OP_DISTINCT:
        if (w.hashes.size() < K) return (double)w.hashes.size();
        return ((double)(K - 1) * TWO53) / (double)(w.hashes[K - 1] + 1);
    case OP_SUM:
        return (double)w.fsum / TWO32;
    case OP_MEAN:
        return w.ns ? ((double)w.fsum / TWO32) / (double)w.ns : __builtin_nan("");
    default:
        break;
    }
    if (w.n == 0) return __builtin_nan("");
    if (op == OP_MIN) return w.mn;
    if (op == OP_MAX) return w.mx;
    return w.has_last ? w.last_v : __builtin_nan("");
}

struct Bucket {
    int64_t j;
    std::vector<Acc> slots;  // one per value input of the group
};

struct KeyState {
    int64_t top = 0;
    std::vector<Bucket> buckets;  // ascending j, all visible after the last trim
};

/* The mutable part of a group: what save/load move and load swaps. */
struct GroupState {
    std::unordered_map<std::string, KeyState> keys;
    bool has_g = false;
    int64_t g = 0;          // newest bucket recorded in the group
    bool has_max_t = false;
    int64_t max_t = 0;      // newest event time recorded
    int64_t late = 0;
    int64_t recorded = 0;
    int64_t swept_g = 0;    // g at the last sweep of hidden keys
    bool swept = false;
    // what the keys hold, kept up to date so that stats() costs nothing per key
    int64_t n_buckets = 0;
    int64_t n_hashes = 0;
    int64_t key_bytes = 0;

    static int64_t hashes_of(const Bucket& bk) {
        int64_t n = 0;
        for (const Acc& a : bk.slots) n += (int64_t)a.hashes.size();
        return n;
    }
    void count_key(const std::string& key, const KeyState& ks, int sign) {
        key_bytes += sign * (int64_t)key.size();
        n_buckets += sign * (int64_t)ks.buckets.size();
        for (const Bucket& bk : ks.buckets) n_hashes += sign * hashes_of(bk);
    }
};

struct Slot {
    int col;        // input column of the value, -1: none
    bool number;    // float/int/bool values (min/max/sum/last)
    bool hashes;    // some distinct aggregate reads it
};

struct Window {
    int slot;       // value input
    int64_t n;      // window / bucket
};

struct AggDef {
    int op;
    int win;        // index into Group::windows
    int out;        // output index (plan order)
};

struct Group {
    std::vector<int> key_cols;
    int time_col = -1;
    int64_t width = 1;
    int64_t retention = 0;
    std::vector<Slot> slots;
    std::vector<Window> windows;  // the distinct (value input, window length) pairs the aggregates read
    std::vector<AggDef> aggs;
    std::vector<Acc> scratch;     // one merged window per entry of `windows`, reused row after row
    GroupState st;
};

/* Row i's key bytes (the group's key columns, appended into `key`), event time and bucket: false when a key
   part or the time is missing, and the row is neither read nor recorded. The engine and the Redis store's
   batch planning (skewless_agg_store.h) cut rows the same way through this one function. */
static inline bool row_key_time(const Group& g, const Col* cols, int64_t i, std::string& key, int64_t& t,
                                int64_t& b) {
    key.clear();
    for (int c : g.key_cols) {
        if (!append_part(key, cols[c], i)) return false;
    }
    const Col& tc = cols[g.time_col];
    if (!col_valid(tc, i)) return false;
    t = ((const int64_t*)tc.values)[i];
    b = floor_div(t, g.width);
    return true;
}

/* Index of keys by the time of their newest bucket, kept only under a key cap (oldest evicted first). */
struct AgeEntry {
    __int128 top_time;
    int group;
    const std::string* key;
    bool operator<(const AgeEntry& o) const {
        if (top_time != o.top_time) return top_time < o.top_time;
        if (group != o.group) return group < o.group;
        return *key < *o.key;
    }
};

class Engine {
  public:
    std::vector<Group> groups;
    int64_t max_keys = 0;
    int64_t evicted = 0;
    int64_t n_keys = 0;
    std::set<AgeEntry> ages;
    std::mutex mu;

    int add_group(int time_col, int64_t width, int64_t retention) {
        groups.emplace_back();
        Group& g = groups.back();
        g.time_col = time_col;
        g.width = width;
        g.retention = retention;
        return (int)groups.size() - 1;
    }
    void add_key_col(int gi, int col) { groups[gi].key_cols.push_back(col); }
    int add_slot(int gi, int col, bool number, bool hashes) {
        groups[gi].slots.push_back(Slot{col, number, hashes});
        return (int)groups[gi].slots.size() - 1;
    }
    void add_agg(int gi, int op, int64_t n, int slot, int out) {
        Group& g = groups[gi];
        int win = 0;
        while (win < (int)g.windows.size() && !(g.windows[win].slot == slot && g.windows[win].n == n)) win++;
        if (win == (int)g.windows.size()) {
            g.windows.push_back(Window{slot, n});
            g.scratch.emplace_back();
        }
        g.aggs.push_back(AggDef{op, win, out});
    }

    /* Read (when outs != NULL) then record every row, in order. outs[a]: the output column of aggregate a,
     * prefilled by nobody: every cell is written here. Returns the rows recorded in at least one group.
     * do_record false: read only (a shadow's copy of rows the primary records), the state is left as it is. */
    int64_t run(const Col* cols, int64_t n_rows, double* const* outs, bool do_record = true) {
        std::lock_guard<std::mutex> lock(mu);
        sl_fp_env env = sl_fp_env_enter();
        int64_t applied = 0;
        std::string key, raw;
        std::vector<char> usable(groups.size());
        for (size_t gi = 0; gi < groups.size(); gi++) {
            const Group& g = groups[gi];
            bool ok = cols[g.time_col].present != 0;
            for (int c : g.key_cols) ok = ok && cols[c].present != 0;
            usable[gi] = ok;
        }
        try {
            for (int64_t i = 0; i < n_rows; i++) {
                bool recorded = false;
                for (size_t gi = 0; gi < groups.size(); gi++) {
                    Group& g = groups[gi];
                    if (outs != NULL) {
                        for (const AggDef& a : g.aggs) outs[a.out][i] = __builtin_nan("");
                    }
                    if (!usable[gi]) continue;
                    int64_t t, b;
                    if (!row_key_time(g, cols, i, key, t, b)) continue;
                    auto it = g.st.keys.find(key);
                    if (outs != NULL) read(g, it == g.st.keys.end() ? NULL : &it->second, b, i, outs);
                    if (do_record && record(g, (int)gi, key, it, t, b, cols, i, raw)) recorded = true;
                }
                applied += recorded;
            }
            if (do_record) sweep_all(false);
        } catch (...) {
            sl_fp_env_leave(env);
            throw;
        }
        sl_fp_env_leave(env);
        return applied;
    }

    /* The row's values: each distinct (value input, window length) merged once over the visible buckets
     * b - n .. b - 1, then finalized by every aggregate that reads it. */
    static void read(Group& g, const KeyState* ks, int64_t b, int64_t row, double* const* outs) {
        int64_t floor_vis = I64_MIN;
        if (ks != NULL) floor_vis = std::max(floor_vis, sat_sub(ks->top, g.retention));
        if (g.st.has_g) floor_vis = std::max(floor_vis, sat_sub(g.st.g, g.retention));
        for (size_t wi = 0; wi < g.windows.size(); wi++) {
            Acc& w = g.scratch[wi];
            w.reset();
            if (ks == NULL) continue;
            int64_t lo = std::max(sat_sub(b, g.windows[wi].n), floor_vis);
            int slot = g.windows[wi].slot;
            for (const Bucket& bk : ks->buckets) {
                if (bk.j < lo) continue;
                if (bk.j >= b) break;
                w.merge(bk.slots[slot]);
            }
        }
        for (const AggDef& a : g.aggs) outs[a.out][row] = finalize(a.op, g.scratch[a.win]);
    }

    bool record(Group& g, int gi, const std::string& key, std::unordered_map<std::string, KeyState>::iterator it,
                int64_t t, int64_t b, const Col* cols, int64_t row, std::string& raw) {
        GroupState& st = g.st;
        bool found = it != st.keys.end();
        if ((found && b < sat_sub(it->second.top, g.retention)) || (st.has_g && b < sat_sub(st.g, g.retention))) {
            st.late += 1;
            return false;
        }
        if (!found) {
            if (max_keys > 0 && n_keys >= max_keys) {
                sweep_all(true);
                while (n_keys >= max_keys && !ages.empty()) evict_oldest();
            }
            it = st.keys.emplace(key, KeyState()).first;
            it->second.top = b;
            n_keys += 1;
            st.key_bytes += (int64_t)key.size();
            if (max_keys > 0) ages.insert(AgeEntry{(__int128)b * g.width, gi, &it->first});
        } else if (b > it->second.top) {
            if (max_keys > 0) {
                ages.erase(AgeEntry{(__int128)it->second.top * g.width, gi, &it->first});
                ages.insert(AgeEntry{(__int128)b * g.width, gi, &it->first});
            }
            it->second.top = b;
        }
        KeyState& ks = it->second;
        if (!st.has_g || b > st.g) {
            st.g = b;
            st.has_g = true;
        }
        if (!st.has_max_t || t > st.max_t) {
            st.max_t = t;
            st.has_max_t = true;
        }
        st.recorded += 1;
        // the bucket, ascending by j; new events are mostly in the newest one
        size_t pos = ks.buckets.size();
        while (pos > 0 && ks.buckets[pos - 1].j > b) pos--;
        if (pos == 0 || ks.buckets[pos - 1].j != b) {
            Bucket nb;
            nb.j = b;
            nb.slots.resize(g.slots.size());
            ks.buckets.insert(ks.buckets.begin() + pos, std::move(nb));
            st.n_buckets += 1;
            pos += 1;
        }
        Bucket& bk = ks.buckets[pos - 1];
        for (size_t s = 0; s < g.slots.size(); s++) {
            const Slot& sl = g.slots[s];
            Acc& acc = bk.slots[s];
            acc.count += 1;
            if (sl.col < 0) continue;
            const Col& vc = cols[sl.col];
            if (!vc.present) continue;
            if (sl.number) {
                bool missing;
                double x = value_number(vc, row, &missing);
                if (missing) continue;
                if (x == 0) x = 0.0;
                acc.add_number(t, x);
                if (sl.hashes) {
                    raw.clear();
                    append_part(raw, vc, row);
                    st.n_hashes += acc.add_hash(hash53(raw));
                }
            } else {
                raw.clear();
                if (!append_part(raw, vc, row)) continue;
                acc.n += 1;
                if (sl.hashes) st.n_hashes += acc.add_hash(hash53(raw));
            }
        }
        trim(g.st, g.retention, ks);
        return true;
    }

    static double value_number(const Col& c, int64_t i, bool* missing) {
        *missing = false;
        if (!col_valid(c, i)) {
            *missing = true;
            return 0.0;
        }
        if (c.kind == CK_F64) {
            double x = ((const double*)c.values)[i];
            *missing = x != x;
            return x;
        }
        if (c.kind == CK_I64) return (double)((const int64_t*)c.values)[i];
        return ((const uint8_t*)c.values)[i] ? 1.0 : 0.0;
    }

    /* Drop a key's hidden buckets (j < top - R or j < G - R): invisible to every later read. */
    static void trim(GroupState& st, int64_t retention, KeyState& ks) {
        int64_t lo = sat_sub(ks.top, retention);
        if (st.has_g) lo = std::max(lo, sat_sub(st.g, retention));
        size_t k = 0;
        while (k < ks.buckets.size() && ks.buckets[k].j < lo) {
            st.n_hashes -= GroupState::hashes_of(ks.buckets[k]);
            k++;
        }
        if (k) {
            st.n_buckets -= (int64_t)k;
            ks.buckets.erase(ks.buckets.begin(), ks.buckets.begin() + k);
        }
    }

    /* Free the keys whose every bucket is hidden (top < G - R); their top can no longer matter either,
     * since an event older than top - R is older than G - R too. Runs when G moved by more than R since
     * the last sweep (or always with force), so memory stays bounded by the keys of the last ~2R buckets. */
    void sweep_all(bool force) {
        for (size_t gi = 0; gi < groups.size(); gi++) {
            Group& g = groups[gi];
            GroupState& st = g.st;
            if (!st.has_g) continue;
            if (!force && st.swept && (__int128)st.g - st.swept_g <= g.retention) continue;
            if (st.swept && st.g == st.swept_g) continue;
            int64_t lo = sat_sub(st.g, g.retention);
            for (auto it = st.keys.begin(); it != st.keys.end();) {
                if (it->second.top < lo) {
                    if (max_keys > 0) ages.erase(AgeEntry{(__int128)it->second.top * g.width, (int)gi, &it->first});
                    st.count_key(it->first, it->second, -1);
                    it = st.keys.erase(it);
                    n_keys -= 1;
                } else {
                    trim(st, g.retention, it->second);
                    ++it;
                }
            }
            st.swept = true;
            st.swept_g = st.g;
        }
    }

    void evict_oldest() {
        AgeEntry e = *ages.begin();
        ages.erase(ages.begin());
        GroupState& st = groups[e.group].st;
        auto it = st.keys.find(*e.key);
        st.count_key(it->first, it->second, -1);
        st.keys.erase(it);
        n_keys -= 1;
        evicted += 1;
    }

    /* keys, buckets, bytes, events_recorded, events_late, keys_evicted, has_watermark, watermark: from the
     * running counters, so it costs nothing per key (metrics read it often). bytes is an estimate: the
     * hash nodes, key bytes, buckets with their accumulators and sketches, the table and the age index. */
    void stats(int64_t* out) {
        std::lock_guard<std::mutex> lock(mu);
        int64_t keys = 0, buckets = 0, bytes = (int64_t)sizeof(Engine), rec = 0, late = 0, wm = 0;
        bool has_wm = false;
        for (const Group& g : groups) {
            const GroupState& st = g.st;
            int64_t nk = (int64_t)st.keys.size();
            keys += nk;
            buckets += st.n_buckets;
            rec += st.recorded;
            late += st.late;
            if (st.has_max_t && (!has_wm || st.max_t > wm)) {
                wm = st.max_t;
                has_wm = true;
            }
            bytes += (int64_t)(st.keys.bucket_count() * sizeof(void*));
            bytes += nk * (int64_t)(sizeof(std::pair<const std::string, KeyState>) + 2 * sizeof(void*)) + st.key_bytes;
            bytes += st.n_buckets * (int64_t)(sizeof(Bucket) + g.slots.size() * sizeof(Acc));
            bytes += st.n_hashes * (int64_t)sizeof(uint64_t);
        }
        if (max_keys > 0) bytes += (int64_t)(ages.size() * (sizeof(AgeEntry) + 4 * sizeof(void*)));
        out[0] = keys;
        out[1] = buckets;
        out[2] = bytes;
        out[3] = rec;
        out[4] = late;
        out[5] = evicted;
        out[6] = has_wm;
        out[7] = wm;
    }

    /* For tests: the running counters (buckets, hashes, key bytes, keys) and the same figures counted by
     * walking the state, in out[0..3] and out[4..7]; the age index size in out[8] (keys under a cap). */
    void recount(int64_t* out) {
        std::lock_guard<std::mutex> lock(mu);
        for (int i = 0; i < 9; i++) out[i] = 0;
        for (const Group& g : groups) {
            const GroupState& st = g.st;
            out[0] += st.n_buckets;
            out[1] += st.n_hashes;
            out[2] += st.key_bytes;
            for (const auto& kv : st.keys) {
                out[4] += (int64_t)kv.second.buckets.size();
                for (const Bucket& bk : kv.second.buckets) out[5] += GroupState::hashes_of(bk);
                out[6] += (int64_t)kv.first.size();
            }
            out[7] += (int64_t)st.keys.size();
        }
        out[3] = n_keys;
        out[8] = max_keys > 0 ? (int64_t)ages.size() : n_keys;
    }

    // ---- persistence -------------------------------------------------------------------------------
    // Payload (little-endian): u32 group count, u64 keys_evicted; per group: its shape (width, retention,
    // slot count) to catch a mismatched plan, u8 has_g, i64 g, u8 has_max_t, i64 max_t, i64 late,
    // i64 recorded, u64 key count, then each key (put_key). Then u32 murmur3 of everything before it.

    /* One key's state: u32 length, key bytes, i64 top, u32 buckets; per bucket i64 j and per slot the Acc
     * (count, n, ns, fsum lo/hi, min, max, u8 has_last, last_t, last_ok, last_v, u32 hash count, hashes).
     * The unit an external store would keep per (group, key). */
    static void put_key(std::string& s, const std::string& key, const KeyState& ks) {
        put_u32(s, (uint32_t)key.size());
        s.append(key);
        put_u64(s, (uint64_t)ks.top);
        put_u32(s, (uint32_t)ks.buckets.size());
        for (const Bucket& bk : ks.buckets) {
            put_u64(s, (uint64_t)bk.j);
            for (const Acc& a : bk.slots) {
                put_u64(s, (uint64_t)a.count);
                put_u64(s, (uint64_t)a.n);
                put_u64(s, (uint64_t)a.ns);
                unsigned __int128 f = (unsigned __int128)a.fsum;
                put_u64(s, (uint64_t)f);
                put_u64(s, (uint64_t)(f >> 64));
                put_f64(s, a.mn);
                put_f64(s, a.mx);
                s.push_back(a.has_last ? 1 : 0);
                put_u64(s, (uint64_t)a.last_t);
                put_u64(s, (uint64_t)a.last_ok);
                put_f64(s, a.last_v);
                put_u32(s, (uint32_t)a.hashes.size());
                for (uint64_t h : a.hashes) put_u64(s, h);
            }
        }
    }

    std::string save() {
        std::lock_guard<std::mutex> lock(mu);
        sweep_all(true);
        std::string s;
        put_u32(s, (uint32_t)groups.size());
        put_u64(s, (uint64_t)evicted);
        for (const Group& g : groups) {
            const GroupState& st = g.st;
            put_u64(s, (uint64_t)g.width);
            put_u64(s, (uint64_t)g.retention);
            put_u32(s, (uint32_t)g.slots.size());
            s.push_back(st.has_g ? 1 : 0);
            put_u64(s, (uint64_t)st.g);
            s.push_back(st.has_max_t ? 1 : 0);
            put_u64(s, (uint64_t)st.max_t);
            put_u64(s, (uint64_t)st.late);
            put_u64(s, (uint64_t)st.recorded);
            put_u64(s, (uint64_t)st.keys.size());
            for (const auto& kv : st.keys) put_key(s, kv.first, kv.second);
        }
        put_u32(s, sl_murmur3_32((const uint8_t*)s.data(), s.size(), HASH_SEED0));
        return s;
    }

    struct Reader {
        const uint8_t* p;
        size_t left;
        void need(size_t n) {
            if (left < n) throw std::invalid_argument("aggregate state file is truncated");
        }
        uint64_t u64() {
            need(8);
            uint64_t v = 0;
            for (int i = 0; i < 8; i++) v |= (uint64_t)p[i] << (8 * i);
            p += 8;
            left -= 8;
            return v;
        }
        uint32_t u32() {
            need(4);
            uint32_t v = 0;
            for (int i = 0; i < 4; i++) v |= (uint32_t)p[i] << (8 * i);
            p += 4;
            left -= 4;
            return v;
        }
        uint8_t u8() {
            need(1);
            uint8_t v = p[0];
            p += 1;
            left -= 1;
            return v;
        }
        int64_t i64() { return (int64_t)u64(); }
        double f64() {
            uint64_t u = u64();
            double x;
            memcpy(&x, &u, 8);
            return x;
        }
    };

    static void bad(const char* what) { throw std::invalid_argument(what); }

    static void get_key(Reader& r, size_t n_slots, std::string& key, KeyState& ks) {
        uint32_t kl = r.u32();
        r.need(kl);
        key.assign((const char*)r.p, kl);
        r.p += kl;
        r.left -= kl;
        ks.top = r.i64();
        uint32_t nb = r.u32();
        if (nb > r.left) bad("aggregate state file is corrupt (bucket count)");
        ks.buckets.resize(nb);
        for (uint32_t b = 0; b < nb; b++) {
            Bucket& bk = ks.buckets[b];
            bk.j = r.i64();
            if (b > 0 && bk.j <= ks.buckets[b - 1].j) bad("aggregate state file is corrupt (bucket order)");
            if (bk.j > ks.top) bad("aggregate state file is corrupt (bucket after top)");
            bk.slots.resize(n_slots);
            for (Acc& a : bk.slots) {
                a.count = r.i64();
                a.n = r.i64();
                a.ns = r.i64();
                uint64_t lo = r.u64(), hi = r.u64();
                a.fsum = (__int128)(((unsigned __int128)hi << 64) | lo);
                a.mn = r.f64();
                a.mx = r.f64();
                a.has_last = r.u8() != 0;
                a.last_t = r.i64();
                a.last_ok = r.i64();
                a.last_v = r.f64();
                uint32_t nh = r.u32();
                if (nh > K) bad("aggregate state file is corrupt (sketch size)");
                a.hashes.resize(nh);
                for (uint32_t h = 0; h < nh; h++) {
                    a.hashes[h] = r.u64();
                    if (h > 0 && a.hashes[h] <= a.hashes[h - 1]) bad("aggregate state file is corrupt (sketch order)");
                }
            }
        }
    }

    /* Replace the whole state with a saved one; the current state is untouched when the file is bad. */
    void load(const char* data, size_t len) {
        if (len < 4) bad("aggregate state file is truncated");
        uint32_t want = 0;
        for (int i = 0; i < 4; i++) want |= (uint32_t)(uint8_t)data[len - 4 + i] << (8 * i);
        if (sl_murmur3_32((const uint8_t*)data, len - 4, HASH_SEED0) != want) bad("aggregate state file is corrupt (checksum)");
        Reader r{(const uint8_t*)data, len - 4};
        if (r.u32() != groups.size()) bad("aggregate state file has another number of groups");
        int64_t ev = r.i64();
        std::vector<GroupState> states(groups.size());
        int64_t total = 0;
        for (size_t gi = 0; gi < groups.size(); gi++) {
            const Group& g = groups[gi];
            GroupState& st = states[gi];
            if (r.i64() != g.width || r.i64() != g.retention || r.u32() != g.slots.size())
                bad("aggregate state file belongs to another plan");
            st.has_g = r.u8() != 0;
            st.g = r.i64();
            st.has_max_t = r.u8() != 0;
            st.max_t = r.i64();
            st.late = r.i64();
            st.recorded = r.i64();
            uint64_t nk = r.u64();
            if (nk > r.left) bad("aggregate state file is corrupt (key count)");
            st.keys.reserve((size_t)nk);
            for (uint64_t k = 0; k < nk; k++) {
                std::string key;
                KeyState ks;
                get_key(r, g.slots.size(), key, ks);
                st.count_key(key, ks, 1);
                if (!st.keys.emplace(std::move(key), std::move(ks)).second) bad("aggregate state file is corrupt (duplicate key)");
            }
            total += (int64_t)st.keys.size();
        }
        if (r.left != 0) bad("aggregate state file has trailing bytes");
        std::lock_guard<std::mutex> lock(mu);  // released before `states` (now the old state) is freed
        for (size_t gi = 0; gi < groups.size(); gi++) {
            std::swap(groups[gi].st, states[gi]);
            groups[gi].st.swept = false;
        }
        evicted = ev;
        n_keys = total;
        ages.clear();
        if (max_keys > 0) {
            for (size_t gi = 0; gi < groups.size(); gi++)
                for (const auto& kv : groups[gi].st.keys)
                    ages.insert(AgeEntry{(__int128)kv.second.top * groups[gi].width, (int)gi, &kv.first});
            while (n_keys > max_keys && !ages.empty()) evict_oldest();
        }
    }
};

}  // namespace skl_agg

#endif
