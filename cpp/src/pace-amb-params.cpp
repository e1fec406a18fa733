// pace-gguf: the AMB settings: defaults, validation, and the model's pace.amb.* GGUF keys.
//
// The keys are untrusted input. llama-model.cpp stores them through llama_pace_gguf_value() as
// "<gguf type>:<value>", with floats printed so that they parse back to the same float, so each key
// is checked here for its type and range: a u64 2^32+100 is out of range (never bank 100), the
// string "50" is not a number, and an array of 16M layers is refused without being expanded.
#include "pace-amb-impl.h"

#include "llama-impl.h"
#include "llama-model.h"

#include <cerrno>
#include <cinttypes>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <sstream>
#include <stdexcept>

namespace {

constexpr int32_t MAX_BANK_SIZE = 4096;
constexpr int32_t MAX_CHUNK     = 65536;

} // namespace

llama_pace_amb_params llama_pace_amb_defaults() {
    llama_pace_amb_params p = {};
    p.enabled     = false;
    p.mode        = LLAMA_PACE_AMB_MODE_CODE;
    p.granularity = LLAMA_PACE_AMB_GRANULARITY_UBATCH;
    p.bank_size   = 100;
    p.topk        = 5;
    p.negk        = 2;
    p.store_topk  = 5;
    p.chunk       = 1024;
    p.theta_high  = 0.75f;
    p.theta_low   = 0.25f;
    p.alpha       = 0.2f;
    p.w_high      = 1.0f;
    p.w_mid       = 0.5f;
    p.lambda      = 0.1f;
    p.momentum    = 0.5f;
    p.n_layers    = 0;
    return p;
}

std::string llama_pace_amb_check(const llama_pace_amb_params & p, int64_t n_layer) {
    std::ostringstream err;
    auto unit = [&](const char * name, float v) {
        if (!(std::isfinite(v) && v >= 0.0f && v <= 1.0f)) {
            err << name << " must be in [0, 1], got " << v;
        }
    };
    if (p.mode != LLAMA_PACE_AMB_MODE_CODE && p.mode != LLAMA_PACE_AMB_MODE_PAPER) {
        err << "mode must be 0 (code) or 1 (paper), got " << p.mode;
    } else if (p.granularity != LLAMA_PACE_AMB_GRANULARITY_UBATCH && p.granularity != LLAMA_PACE_AMB_GRANULARITY_PROMPT) {
        err << "granularity must be 0 (ubatch) or 1 (prompt), got " << p.granularity;
    } else if (p.bank_size < 1 || p.bank_size > MAX_BANK_SIZE) {
        err << "bank_size must be in [1, " << MAX_BANK_SIZE << "], got " << p.bank_size;
    } else if (p.topk < 1 || p.store_topk < 1 || p.negk < 0) {
        err << "topk and store_topk must be >= 1 and negk >= 0, got " << p.topk << ", " << p.store_topk << ", " << p.negk;
    } else if (p.chunk < 1 || p.chunk > MAX_CHUNK) {
        err << "chunk must be in [1, " << MAX_CHUNK << "], got " << p.chunk;
    } else if (p.n_layers < 0 || p.n_layers > LLAMA_PACE_MAX_LAYERS) {
        err << "n_layers must be in [0, " << LLAMA_PACE_MAX_LAYERS << "], got " << p.n_layers;
    } else if (p.enabled && p.n_layers == 0) {
        err << "AMB is enabled but no layers are given";
    }
    if (err.tellp() == 0) { unit("theta_high", p.theta_high); }
    if (err.tellp() == 0) { unit("theta_low", p.theta_low); }
    if (err.tellp() == 0) { unit("alpha", p.alpha); }
    if (err.tellp() == 0) { unit("momentum", p.momentum); }
    if (err.tellp() == 0 && p.theta_low > p.theta_high) {
        err << "theta_low (" << p.theta_low << ") must be <= theta_high (" << p.theta_high << ")";
    }
    if (err.tellp() == 0 && !(std::isfinite(p.w_high) && std::isfinite(p.w_mid) && std::isfinite(p.lambda))) {
        err << "w_high, w_mid and lambda must be finite";
    }
    for (int32_t i = 0; err.tellp() == 0 && i < p.n_layers; ++i) {
        if (p.layers[i] < 0 || p.layers[i] >= n_layer) {
            err << "layer " << p.layers[i] << " is out of range: the model has layers 0.." << n_layer - 1;
        }
        for (int32_t j = 0; err.tellp() == 0 && j < i; ++j) {
            if (p.layers[j] == p.layers[i]) {
                err << "layer " << p.layers[i] << " is listed twice";
            }
        }
    }
    return err.str();
}

std::string llama_pace_amb_check_arch(const llama_pace_amb_params & p, const llama_model & model) {
    const auto & hp = model.hparams;
    for (int32_t i = 0; p.enabled && i < p.n_layers; ++i) {
        const int32_t il = p.layers[i];
        if (hp.n_expert > 0) {
            // build_ffn serves the shared expert of a mixture-of-experts layer, not its FFN.
            return format("layer %d: the AMB supports dense FFNs only; this model is a mixture of experts (%u experts)",
                          il, hp.n_expert);
        }
        if (hp.n_ff(il) == 0) {
            return format("layer %d has no feed-forward network for the AMB to act on", il);
        }
    }
    return "";
}

// ---- pace.* GGUF values ---------------------------------------------------------------------------

namespace {

bool is_integer_type(gguf_type t) {
    switch (t) {
        case GGUF_TYPE_UINT8: case GGUF_TYPE_INT8: case GGUF_TYPE_UINT16: case GGUF_TYPE_INT16:
        case GGUF_TYPE_UINT32: case GGUF_TYPE_INT32: case GGUF_TYPE_UINT64: case GGUF_TYPE_INT64:
            return true;
        default:
            return false;
    }
}

// An integer element of any width as text (signed types as signed).
std::string integer_text(gguf_type t, const void * p) {
    char buf[32];
    switch (t) {
        case GGUF_TYPE_UINT8:  snprintf(buf, sizeof(buf), "%u", (unsigned) *(const uint8_t *) p); break;
        case GGUF_TYPE_INT8:   snprintf(buf, sizeof(buf), "%d", (int) *(const int8_t *) p); break;
        case GGUF_TYPE_UINT16: snprintf(buf, sizeof(buf), "%u", (unsigned) *(const uint16_t *) p); break;
        case GGUF_TYPE_INT16:  snprintf(buf, sizeof(buf), "%d", (int) *(const int16_t *) p); break;
        case GGUF_TYPE_UINT32: snprintf(buf, sizeof(buf), "%" PRIu32, *(const uint32_t *) p); break;
        case GGUF_TYPE_INT32:  snprintf(buf, sizeof(buf), "%" PRId32, *(const int32_t *) p); break;
        case GGUF_TYPE_UINT64: snprintf(buf, sizeof(buf), "%" PRIu64, *(const uint64_t *) p); break;
        case GGUF_TYPE_INT64:  snprintf(buf, sizeof(buf), "%" PRId64, *(const int64_t *) p); break;
        default: return "?";
    }
    return buf;
}

size_t type_size(gguf_type t) {
    switch (t) {
        case GGUF_TYPE_UINT8: case GGUF_TYPE_INT8: case GGUF_TYPE_BOOL: return 1;
        case GGUF_TYPE_UINT16: case GGUF_TYPE_INT16: return 2;
        case GGUF_TYPE_UINT32: case GGUF_TYPE_INT32: case GGUF_TYPE_FLOAT32: return 4;
        case GGUF_TYPE_UINT64: case GGUF_TYPE_INT64: case GGUF_TYPE_FLOAT64: return 8;
        default: return 0;
    }
}

} // namespace

std::string llama_pace_gguf_value(const gguf_context * ctx, int64_t key_id) {
    const gguf_type t = gguf_get_kv_type(ctx, key_id);
    const std::string tag = std::string(gguf_type_name(t)) + ":";
    char buf[64];
    switch (t) {
        case GGUF_TYPE_FLOAT32:
            snprintf(buf, sizeof(buf), "%.9g", gguf_get_val_f32(ctx, key_id)); // 9 digits: any float round-trips
            return tag + buf;
        case GGUF_TYPE_FLOAT64:
            snprintf(buf, sizeof(buf), "%.17g", gguf_get_val_f64(ctx, key_id));
            return tag + buf;
        case GGUF_TYPE_BOOL:
            return tag + (gguf_get_val_bool(ctx, key_id) ? "true" : "false");
        case GGUF_TYPE_STRING:
            return tag + gguf_get_val_str(ctx, key_id);
        case GGUF_TYPE_ARRAY: {
            // "array:<element type>:<count>:<v>,<v>,..." with integer elements expanded only up to
            // what a layer list can hold: a longer array is refused by its count alone.
            const gguf_type et = gguf_get_arr_type(ctx, key_id);
            const size_t n = gguf_get_arr_n(ctx, key_id);
            std::string out = tag + gguf_type_name(et) + ":" + std::to_string(n) + ":";
            if (!is_integer_type(et) || n > LLAMA_PACE_MAX_LAYERS) {
                return out;
            }
            const char * data = (const char *) gguf_get_arr_data(ctx, key_id);
            for (size_t i = 0; i < n; ++i) {
                out += (i ? "," : "") + integer_text(et, data + i * type_size(et));
            }
            return out;
        }
        default:
            if (is_integer_type(t)) {
                return tag + integer_text(t, gguf_get_val_data(ctx, key_id));
            }
            return tag;
    }
}

namespace {

// Reads typed "<type>:<value>" renderings of the model's pace.amb.* keys; absent keys keep defaults.
struct gguf_keys {
    const llama_model & model;

    struct typed { std::string type, value; };

    bool find(const char * key, typed & out) const {
        auto it = model.gguf_kv.find(key);
        if (it == model.gguf_kv.end()) {
            return false;
        }
        const size_t colon = it->second.find(':');
        out = colon == std::string::npos ? typed{"", it->second}
                                         : typed{it->second.substr(0, colon), it->second.substr(colon + 1)};
        return true;
    }
    [[noreturn]] static void fail(const char * key, const typed & v, const std::string & want) {
        // The value is untrusted bytes: quote at most 40 of them, other than printable ASCII as \xNN,
        // so that the message (also logged through llama.cpp's log callback) is short, valid UTF-8.
        std::string shown;
        for (size_t i = 0; i < v.value.size() && i < 40; ++i) {
            const unsigned char c = (unsigned char) v.value[i];
            char esc[8];
            snprintf(esc, sizeof(esc), "\\x%02x", c);
            shown += c >= 0x20 && c < 0x7f ? std::string(1, (char) c) : std::string(esc);
        }
        if (v.value.size() > 40) {
            shown += "...";
        }
        throw std::runtime_error(format("invalid GGUF key %s (%s '%s'): expected %s", key, v.type.c_str(), shown.c_str(), want.c_str()));
    }
    static bool integer_type(const std::string & type) {
        return type == "u8" || type == "i8" || type == "u16" || type == "i16" ||
               type == "u32" || type == "i32" || type == "u64" || type == "i64";
    }
    // A decimal integer that fits int32, else false.
    static bool parse_int32(const std::string & s, int32_t & out) {
        if (s.empty()) {
            return false;
        }
        errno = 0;
        char * end = nullptr;
        const long long x = std::strtoll(s.c_str(), &end, 10);
        if (errno != 0 || *end != '\0' || x < std::numeric_limits<int32_t>::min() || x > std::numeric_limits<int32_t>::max()) {
            return false;
        }
        out = (int32_t) x;
        return true;
    }

    void get_bool(const char * key, bool & out) const {
        typed v;
        if (!find(key, v)) { return; }
        if (v.type != "bool") { fail(key, v, "a bool"); }
        out = v.value == "true";
    }
    void get_int(const char * key, int32_t & out) const {
        typed v;
        if (!find(key, v)) { return; }
        if (!integer_type(v.type) || !parse_int32(v.value, out)) { fail(key, v, "an integer in the int32 range"); }
    }
    void get_float(const char * key, float & out) const {
        typed v;
        if (!find(key, v)) { return; }
        if (v.type != "f32" && v.type != "f64") { fail(key, v, "a float"); }
        errno = 0;
        char * end = nullptr;
        const double x = std::strtod(v.value.c_str(), &end);
        const float f = (float) x;
        if (v.value.empty() || *end != '\0' || !std::isfinite(x) || !std::isfinite(f)) {
            fail(key, v, "a finite float32");
        }
        out = f;
    }
    void get_choice(const char * key, int32_t & out, const char * a, const char * b) const {
        typed v;
        if (!find(key, v)) { return; }
        if (v.type != "str" || (v.value != a && v.value != b)) { fail(key, v, std::string("the string ") + a + " or " + b); }
        out = v.value == a ? 0 : 1;
    }
    void get_layers(const char * key, llama_pace_amb_params & p) const {
        typed v;
        if (!find(key, v)) { return; }
        // value: "<element type>:<count>:<v>,<v>,..."
        const size_t c1 = v.value.find(':');
        const size_t c2 = c1 == std::string::npos ? c1 : v.value.find(':', c1 + 1);
        if (v.type != "arr" || c2 == std::string::npos || !integer_type(v.value.substr(0, c1))) {
            fail(key, v, "an array of integer layer indices");
        }
        int32_t count = 0;
        if (!parse_int32(v.value.substr(c1 + 1, c2 - c1 - 1), count) || count > LLAMA_PACE_MAX_LAYERS) {
            fail(key, typed{v.type, v.value.substr(0, c2)}, format("at most %d layers", LLAMA_PACE_MAX_LAYERS));
        }
        std::istringstream items(v.value.substr(c2 + 1));
        std::string item;
        p.n_layers = 0;
        while (p.n_layers < count && std::getline(items, item, ',')) {
            if (!parse_int32(item, p.layers[p.n_layers])) {
                fail(key, v, "layer indices in the int32 range");
            }
            ++p.n_layers;
        }
        if (p.n_layers != count) {
            fail(key, v, "an array of integer layer indices");
        }
    }
};

} // namespace

llama_pace_amb_params llama_pace_amb_params_from_model(const llama_model & model) {
    llama_pace_amb_params p = llama_pace_amb_defaults();
    const gguf_keys r{model};
    r.get_bool  ("pace.amb.enabled",     p.enabled);
    r.get_layers("pace.amb.layers",      p);
    r.get_int   ("pace.amb.bank_size",   p.bank_size);
    r.get_int   ("pace.amb.topk",        p.topk);
    r.get_int   ("pace.amb.negk",        p.negk);
    r.get_int   ("pace.amb.store_topk",  p.store_topk);
    r.get_int   ("pace.amb.chunk",       p.chunk);
    r.get_float ("pace.amb.theta_high",  p.theta_high);
    r.get_float ("pace.amb.theta_low",   p.theta_low);
    r.get_float ("pace.amb.alpha",       p.alpha);
    r.get_float ("pace.amb.w_high",      p.w_high);
    r.get_float ("pace.amb.w_mid",       p.w_mid);
    r.get_float ("pace.amb.lambda",      p.lambda);
    r.get_float ("pace.amb.momentum",    p.momentum);
    r.get_choice("pace.amb.mode",        p.mode, "code", "paper");
    r.get_choice("pace.amb.granularity", p.granularity, "ubatch", "prompt");
    std::string err = llama_pace_amb_check(p, model.hparams.n_layer());
    if (err.empty()) {
        err = llama_pace_amb_check_arch(p, model);
    }
    if (!err.empty()) {
        throw std::runtime_error("invalid pace.amb.* metadata in the model: " + err);
    }
    return p;
}
