/* The compiled External Term Format codec: the same functions, results and errors as _pure.py.
 *
 * _pure.py is the reference; every reason string and offset below follows it, so the two can be
 * compared byte for byte (tests/term/test_compiled.py does).  Decoding reads the caller's buffer
 * in place and checks each length against what is left before allocating; rare paths (LOCAL_EXT,
 * zlib, integers of 2^64 and up on encode) call back into _pure.py, where speed does not matter.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

/* Nesting the C stack allows whatever max_depth says: ~200 bytes a level, far below any
 * thread's stack.  Deeper input fails as the pure codec does when Python's stack runs out. */
#define HARD_DEPTH 2000

enum {
    T_COMPRESSED = 80, T_NEW_FLOAT = 70, T_BIT_BINARY = 77, T_ATOM_CACHE_REF = 82,
    T_NEW_PID = 88, T_NEW_PORT = 89, T_NEWER_REFERENCE = 90, T_SMALL_INTEGER = 97,
    T_INTEGER = 98, T_FLOAT = 99, T_ATOM = 100, T_REFERENCE = 101, T_PORT = 102, T_PID = 103,
    T_SMALL_TUPLE = 104, T_LARGE_TUPLE = 105, T_NIL = 106, T_STRING = 107, T_LIST = 108,
    T_BINARY = 109, T_SMALL_BIG = 110, T_LARGE_BIG = 111, T_NEW_FUN = 112, T_EXPORT = 113,
    T_NEW_REFERENCE = 114, T_SMALL_ATOM = 115, T_MAP = 116, T_FUN = 117, T_ATOM_UTF8 = 118,
    T_SMALL_ATOM_UTF8 = 119, T_V4_PORT = 120, T_LOCAL = 121, T_VERSION = 131
};

/* ------------------------------------------------------------------------------------------ */
/* Objects imported from the Python side at init                                               */
/* ------------------------------------------------------------------------------------------ */

static PyObject *AtomType, *PidType, *ReferenceType, *PortType, *BitStringType,
    *ImproperListType, *MapType, *ExportFunType, *FunType, *LocalTermType;
static PyObject *DecodeErrorType, *EncodeErrorType, *StructError;
static PyObject *pure_inflate, *pure_local_decoder, *pure_encode_big, *zlib_compress;
static PyObject *default_mapping, *default_limits, *str_hint;
static PyObject *small_ints[256]; /* 0..255, CPython's own shared ints, without the call */
static PyObject *s_node, *s_id, *s_serial, *s_creation, *s_ids, *s_v4, *s_data, *s_tail_bits,
    *s_items, *s_tail, *s_module, *s_function, *s_arity, *s_old_index, *s_old_uniq, *s_pid,
    *s_free_vars, *s_uniq, *s_index, *s_raw, *s_at, *s_compressed, *s_max_depth, *s_max_size,
    *s_max_terms, *s_max_memory,
    *s_binary_as, *s_string_as, *s_atom_as, *s_bool_atoms, *s_none_atom, *s_str_as,
    *s_bytes_like, *s_true, *s_false, *s_key, *s_value, *s_str;

/* ------------------------------------------------------------------------------------------ */
/* Per-Mapping state: the mapping's switches and a cache of decoded atoms                      */
/* ------------------------------------------------------------------------------------------ */

/* Atom kinds in the cache: mapped (the mapping applies) or plain (node/module fields, always an
 * Atom), each for Latin-1 or UTF-8 names. */
enum { K_LATIN1 = 0, K_UTF8 = 1, K_PLAIN_LATIN1 = 2, K_PLAIN_UTF8 = 3 };

#define ACACHE_SIZE 1024 /* direct-mapped: a miss just replaces the slot */

typedef struct {
    uint32_t hash;
    int kind;
    PyObject *raw;   /* bytes of the name as on the wire */
    PyObject *value; /* what the decoder returns for it */
} AtomSlot;

enum { STR_ERROR = 0, STR_BINARY, STR_CHARLIST, STR_ATOM };

typedef struct {
    int binary_as_str, string_as_str, atom_as_str;
    int str_as, bytes_like;
    PyObject *special;   /* atom name -> True/False/None */
    PyObject *none_atom; /* str, or NULL for "None cannot be encoded" */
    AtomSlot cache[ACACHE_SIZE];
} MapState;

static PyObject *mapstates;          /* Mapping -> capsule(MapState) */
/* The last few mappings used (strong refs; their states live in mapstates), found by identity:
 * the usual case is one mapping for all calls, or the distribution layer's two alternating
 * (control, payload), and Mapping's hash is a Python-level function. */
#define RECENT 4
static struct { PyObject *mapping; MapState *state; } recent[RECENT];
static int recent_next;
#define MAX_MAPSTATES 64

static void mapstate_free(MapState *ms) {
    if (!ms) return;
    for (int i = 0; i < ACACHE_SIZE; i++) {
        Py_XDECREF(ms->cache[i].raw);
        Py_XDECREF(ms->cache[i].value);
    }
    Py_XDECREF(ms->special);
    Py_XDECREF(ms->none_atom);
    PyMem_Free(ms);
}

static void capsule_free(PyObject *cap) {
    mapstate_free((MapState *)PyCapsule_GetPointer(cap, "beambridge.mapstate"));
}

static int attr_equals(PyObject *obj, PyObject *name, const char *expected, int *out) {
    PyObject *v = PyObject_GetAttr(obj, name);
    if (!v) return -1;
    *out = PyUnicode_Check(v) && PyUnicode_CompareWithASCIIString(v, expected) == 0;
    Py_DECREF(v);
    return 0;
}

static MapState *mapstate_build(PyObject *mapping) {
    MapState *ms = PyMem_Calloc(1, sizeof(MapState));
    PyObject *v = NULL;
    if (!ms) { PyErr_NoMemory(); return NULL; }
    if (attr_equals(mapping, s_binary_as, "str", &ms->binary_as_str) < 0) goto fail;
    if (attr_equals(mapping, s_string_as, "str", &ms->string_as_str) < 0) goto fail;
    if (attr_equals(mapping, s_atom_as, "str", &ms->atom_as_str) < 0) goto fail;
    v = PyObject_GetAttr(mapping, s_str_as);
    if (!v) goto fail;
    ms->str_as = !PyUnicode_Check(v) ? STR_ERROR
        : PyUnicode_CompareWithASCIIString(v, "binary") == 0 ? STR_BINARY
        : PyUnicode_CompareWithASCIIString(v, "charlist") == 0 ? STR_CHARLIST
        : PyUnicode_CompareWithASCIIString(v, "atom") == 0 ? STR_ATOM : STR_ERROR;
    Py_CLEAR(v);
    v = PyObject_GetAttr(mapping, s_bytes_like);
    if (!v) goto fail;
    ms->bytes_like = PyObject_IsTrue(v);
    Py_CLEAR(v);
    if (ms->bytes_like < 0) goto fail;
    ms->special = PyDict_New();
    if (!ms->special) goto fail;
    v = PyObject_GetAttr(mapping, s_bool_atoms);
    if (!v) goto fail;
    int bools = PyObject_IsTrue(v);
    Py_CLEAR(v);
    if (bools < 0) goto fail;
    if (bools && (PyDict_SetItem(ms->special, s_true, Py_True) < 0 ||
                  PyDict_SetItem(ms->special, s_false, Py_False) < 0)) goto fail;
    v = PyObject_GetAttr(mapping, s_none_atom);
    if (!v) goto fail;
    if (v != Py_None) {
        if (!PyUnicode_Check(v)) { PyErr_SetString(PyExc_TypeError, "none_atom must be a str"); goto fail; }
        if (PyDict_SetItem(ms->special, v, Py_None) < 0) goto fail;
        ms->none_atom = v;
        v = NULL;
    }
    Py_CLEAR(v);
    return ms;
fail:
    Py_XDECREF(v);
    mapstate_free(ms);
    return NULL;
}

/* The state for `mapping`; *temp says the caller must free it (when too many mappings are in use
 * to keep them all). */
static MapState *mapstate_get(PyObject *mapping, int *temp) {
    *temp = 0;
    for (int i = 0; i < RECENT; i++)
        if (recent[i].mapping == mapping) return recent[i].state;
    PyObject *cap = PyDict_GetItemWithError(mapstates, mapping);
    MapState *ms;
    if (cap) {
        ms = PyCapsule_GetPointer(cap, "beambridge.mapstate");
    } else {
        if (PyErr_Occurred()) return NULL;
        ms = mapstate_build(mapping);
        if (!ms) return NULL;
        if (PyDict_GET_SIZE(mapstates) >= MAX_MAPSTATES) { *temp = 1; return ms; }
        cap = PyCapsule_New(ms, "beambridge.mapstate", capsule_free);
        if (!cap) { mapstate_free(ms); return NULL; }
        int rc = PyDict_SetItem(mapstates, mapping, cap);
        Py_DECREF(cap);
        if (rc < 0) return NULL;
    }
    Py_INCREF(mapping);
    Py_XSETREF(recent[recent_next].mapping, mapping);
    recent[recent_next].state = ms;
    recent_next = (recent_next + 1) % RECENT;
    return ms;
}

/* ------------------------------------------------------------------------------------------ */
/* Small helpers                                                                               */
/* ------------------------------------------------------------------------------------------ */

static inline uint16_t rd16(const unsigned char *p) { return (uint16_t)((p[0] << 8) | p[1]); }
static inline uint32_t rd32(const unsigned char *p) {
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
}
static inline uint64_t rd64(const unsigned char *p) {
    return ((uint64_t)rd32(p) << 32) | rd32(p + 4);
}

/* Call `type` with n positional arguments, which it steals (NULLs allowed: then it fails). */
static PyObject *make(PyObject *type, int n, PyObject **args) {
    PyObject *result = NULL;
    int ok = 1;
    for (int i = 0; i < n; i++) if (!args[i]) ok = 0;
    if (ok) result = PyObject_Vectorcall(type, args, (size_t)n, NULL);
    for (int i = 0; i < n; i++) Py_XDECREF(args[i]);
    return result;
}

/* Pids, references and ports are slotted dataclasses whose constructors validate every field.
 * The decoder reads fields that are in range by construction, so it allocates the object and
 * stores each field through its slot's descriptor (object.__setattr__ without the name lookup);
 * `make` stays the fallback if a class ever stops being slotted. */
typedef struct {
    PyTypeObject *type;
    int n;
    PyObject *slot[4]; /* member descriptors, in constructor order */
} Slotted;

static Slotted pid_slots, ref_slots, port_slots;

static int slotted_init(Slotted *s, PyObject *type, int n, const char *const *names) {
    s->type = NULL;
    s->n = n;
    if (!PyType_Check(type) || ((PyTypeObject *)type)->tp_dictoffset != 0) return 0;
    for (int i = 0; i < n; i++) {
        PyObject *descr = PyDict_GetItemString(((PyTypeObject *)type)->tp_dict, names[i]);
        if (!descr || !Py_IS_TYPE(descr, &PyMemberDescr_Type)) return 0; /* not a slot */
        Py_INCREF(descr);
        s->slot[i] = descr;
    }
    s->type = (PyTypeObject *)type;
    return 0;
}

/* Like make(), for a Slotted class: steals args, NULLs allowed (then it fails). */
static PyObject *make_slotted(Slotted *s, PyObject *type, PyObject **args) {
    if (!s->type) return make(type, s->n, args);
    PyObject *obj = NULL;
    int ok = 1;
    for (int i = 0; i < s->n; i++) if (!args[i]) ok = 0;
    if (ok) obj = s->type->tp_alloc(s->type, 0);
    for (int i = 0; obj && i < s->n; i++)
        if (Py_TYPE(s->slot[i])->tp_descr_set(s->slot[i], obj, args[i]) < 0) Py_CLEAR(obj);
    for (int i = 0; i < s->n; i++) Py_XDECREF(args[i]);
    return obj;
}

static void set_exception_object(PyObject *exc) {
    PyErr_SetObject((PyObject *)Py_TYPE(exc), exc);
    Py_DECREF(exc);
}

/* ------------------------------------------------------------------------------------------ */
/* Decoding                                                                                    */
/* ------------------------------------------------------------------------------------------ */

typedef struct {
    const unsigned char *buf;
    Py_ssize_t len;
    Py_ssize_t pos;
    Py_ssize_t top;      /* where decoding started (for the too-deep error) */
    long max_depth;
    long long max_terms, max_memory;
    long long terms_left, memory_left; /* this call's budget (Limits.max_terms, max_memory) */
    MapState *ms;
    PyObject *atom_cache; /* NULL when there is none */
    PyObject *src;        /* the object whose buffer this is (for LOCAL_EXT) */
    PyObject *mapping, *limits;
    /* Containers kept out of the cyclic GC while the call builds them (strong refs; tracked
     * again before it returns), and this call's cache of short binaries; both set up by
     * run_decoder, see there. */
    PyObject **held;
    Py_ssize_t n_held, cap_held; /* cap_held 0: a small term, nothing is held */
    PyObject **bcache;
    int short_seen, bcache_off;
    long bcache_hits, bcache_tries;
} Dec;

static PyObject *derr(Py_ssize_t offset, const char *fmt, ...) {
    va_list va;
    va_start(va, fmt);
    PyObject *reason = PyUnicode_FromFormatV(fmt, va);
    va_end(va);
    if (!reason) return NULL;
    PyObject *args[2] = {reason, PyLong_FromSsize_t(offset)};
    PyObject *exc = make(DecodeErrorType, 2, args);
    if (exc) set_exception_object(exc);
    return NULL;
}

static PyObject *eof(Dec *d) { return derr(d->len, "unexpected end of input"); }

#define NEED_AT(p, n) do { if (d->len - (p) < (Py_ssize_t)(n)) return eof(d); } while (0)

static PyObject *dec(Dec *d, int depth);

/* The cost model of Limits.max_memory, as in _pure.py. */
#define TERM_COST 32
#define CONTAINER_COST 32
#define SLOT_COST 8
#define MAP_PAIR_COST (6 * SLOT_COST)
#define STRUCT_COST 96
#define LIST_ITEM_COST (TERM_COST + SLOT_COST)

/* Count terms and bytes about to be built; -1 (DecodeError set) if they overrun the budget.
 * Each charge is at most a few times 2^32, so the counters cannot wrap. */
static int charge(Dec *d, long long terms, long long memory, Py_ssize_t offset) {
    d->terms_left -= terms;
    d->memory_left -= memory;
    if (d->terms_left >= 0 && d->memory_left >= 0) return 0;
    if (d->terms_left < 0) derr(offset, "over max_terms=%lld terms", d->max_terms);
    else derr(offset, "over max_memory=%lld bytes of objects (estimated)", d->max_memory);
    return -1;
}

static int depth_error(Dec *d, int depth, Py_ssize_t offset) {
    if (depth > d->max_depth) {
        derr(offset, "nesting deeper than max_depth=%ld", d->max_depth);
        return -1;
    }
    if (depth > HARD_DEPTH) {
        derr(d->top, "nesting too deep for the Python stack; lower max_depth");
        return -1;
    }
    return 0;
}

/* Keeping new containers out of the cyclic GC.  On 3.11 every container allocation counts
 * towards a collection, which then walks every tracked container made since the last one: a
 * decode of thousands of dicts and lists spent ~40% of its time there.  The decoder untracks
 * each container it makes (holding a reference, so a container dropped midway stays valid) and
 * tracks them all again on the way out, success or error.  While untracked a container only
 * makes the GC more conservative (what it refers to looks referenced from outside), never
 * frees anything; no global GC state is touched, so other threads and Python code the decoder
 * calls (Atom(), Map(), a custom atom cache) see the collector as they left it. */
#define HELD_INLINE 64

static int held_grow(Dec *d) {
    Py_ssize_t cap = d->cap_held * 2;
    PyObject **grown = d->cap_held == HELD_INLINE ? PyMem_Malloc(cap * sizeof *grown)
                                                  : PyMem_Realloc(d->held, cap * sizeof *grown);
    if (!grown) return -1;
    if (d->cap_held == HELD_INLINE) memcpy(grown, d->held, HELD_INLINE * sizeof *grown);
    d->held = grown;
    d->cap_held = cap;
    return 0;
}

/* Untrack `op`, a list or non-empty tuple this call just made (so tracked); without memory
 * for the list it stays tracked, which is always correct. */
static inline void hold(Dec *d, PyObject *op) {
    if (d->n_held == d->cap_held && (!d->cap_held || held_grow(d) < 0)) return;
    PyObject_GC_UnTrack(op);
    d->held[d->n_held++] = Py_NewRef(op);
}

/* `op` is untracked but must be tracked when the call returns (a dict that holds containers). */
static void hold_untracked(Dec *d, PyObject *op) {
    if (d->n_held == d->cap_held && (!d->cap_held || held_grow(d) < 0)) {
        PyObject_GC_Track(op);
        return;
    }
    d->held[d->n_held++] = Py_NewRef(op);
}

/* A tuple this call may have untracked: a dict holding it would be tracked had it not been
 * (a non-empty tuple is tracked when made; the empty one never is). */
static inline int held_tuple(PyObject *o) {
    return PyTuple_CheckExact(o) && PyTuple_GET_SIZE(o) > 0;
}

/* Track every held container again and drop the references (some are freed here: the ones
 * the result did not keep, or all of them after an error). */
static void release_held(Dec *d) {
    for (Py_ssize_t i = 0; i < d->n_held; i++) {
        PyObject *op = d->held[i];
        if (!PyObject_GC_IsTracked(op)) PyObject_GC_Track(op);
        Py_DECREF(op);
    }
    if (d->cap_held > HELD_INLINE) PyMem_Free(d->held);
    d->n_held = 0;
}

/* A cache of this call's short binaries by content: a document's keys and tag values repeat,
 * and one bytes object for each (immutable, so sharing it is invisible but to `is`) saves the
 * allocation and, for a key, the hashing.  Direct-mapped: a miss replaces the slot.  Set up at
 * the BCACHE_AFTER-th short binary, so small terms do not pay for clearing it, and turned off
 * when it rarely hits (a map of unique keys). */
#define BCACHE_SIZE 256
#define BCACHE_MAX 32
#define BCACHE_AFTER 8
#define BCACHE_TRIAL 256 /* lookups before judging the hit rate */

/* memcmp(a, b, n) == 0 for 2 <= n <= BCACHE_MAX, in a few word loads instead of a call. */
static inline int short_eq(const unsigned char *a, const unsigned char *b, Py_ssize_t n) {
    uint64_t x, y, u, v;
    if (n >= 8) {
        for (Py_ssize_t i = 0; i + 8 < n; i += 8) {
            memcpy(&x, a + i, 8);
            memcpy(&y, b + i, 8);
            if (x != y) return 0;
        }
        memcpy(&u, a + n - 8, 8);
        memcpy(&v, b + n - 8, 8);
        return u == v;
    }
    if (n >= 4) {
        uint32_t p, q, r, s;
        memcpy(&p, a, 4); memcpy(&q, b, 4);
        memcpy(&r, a + n - 4, 4); memcpy(&s, b + n - 4, 4);
        return p == q && r == s;
    }
    return a[0] == b[0] && a[1] == b[1] && a[n - 1] == b[n - 1];
}

static inline unsigned bcache_slot(const unsigned char *p, Py_ssize_t n) {
    uint64_t a, b;
    if (n >= 8) {
        memcpy(&a, p, 8);
        memcpy(&b, p + n - 8, 8);
    } else if (n >= 4) {
        uint32_t x, y;
        memcpy(&x, p, 4);
        memcpy(&y, p + n - 4, 4);
        a = x;
        b = y;
    } else {
        a = p[0] | (uint64_t)p[n / 2] << 8 | (uint64_t)p[n - 1] << 16;
        b = 0;
    }
    uint64_t h = (a * 0x9E3779B97F4A7C15ull) ^ ((b + (uint64_t)n) * 0xC2B2AE3D27D4EB4Full);
    return (unsigned)((h ^ (h >> 29)) * 0x9E3779B97F4A7C15ull >> 56); /* 8 bits: BCACHE_SIZE */
}

static void release_bcache(Dec *d) {
    if (d->short_seen < BCACHE_AFTER) return;
    for (int i = 0; i < BCACHE_SIZE; i++) Py_XDECREF(d->bcache[i]);
}

/* The bytes (or, with binary_as="str", the str) for a binary of n bytes at p. */
static PyObject *binary_value(Dec *d, const unsigned char *p, Py_ssize_t n) {
    int as_str = d->ms->binary_as_str;
    PyObject **slot = NULL;
    if (n >= 2 && n <= BCACHE_MAX) { /* 0 and 1 byte long: CPython shares those already */
        if (d->short_seen >= BCACHE_AFTER) {
            if (d->bcache_off) goto make;
            slot = &d->bcache[bcache_slot(p, n)];
            PyObject *c = *slot;
            if (c) {
                if (as_str ? (PyUnicode_GET_LENGTH(c) == n && short_eq(PyUnicode_1BYTE_DATA(c), p, n))
                           : (PyBytes_GET_SIZE(c) == n &&
                              short_eq((const unsigned char *)PyBytes_AS_STRING(c), p, n))) {
                    d->bcache_hits++;
                    return Py_NewRef(c);
                }
            }
            if (++d->bcache_tries == BCACHE_TRIAL && d->bcache_hits < BCACHE_TRIAL / 8)
                d->bcache_off = 1;
        } else if (++d->short_seen == BCACHE_AFTER) {
            memset(d->bcache, 0, BCACHE_SIZE * sizeof *d->bcache);
        }
    }
make:;
    PyObject *v = NULL;
    if (as_str) {
        v = PyUnicode_DecodeUTF8((const char *)p, n, "strict");
        if (!v) {
            if (!PyErr_ExceptionMatches(PyExc_UnicodeDecodeError)) return NULL;
            PyErr_Clear();
        } else if (!PyUnicode_IS_ASCII(v)) {
            return v; /* the cache compares ASCII text only */
        }
    }
    if (!v) {
        v = PyBytes_FromStringAndSize((const char *)p, n);
        if (!v || as_str) return v; /* not text: bytes, uncached (the slot holds str) */
    }
    if (slot) Py_XSETREF(*slot, Py_NewRef(v));
    return v;
}

static inline uint32_t name_hash(const unsigned char *p, Py_ssize_t n, int kind) {
    uint32_t h = 2166136261u ^ (uint32_t)kind;
    for (Py_ssize_t i = 0; i < n; i++) h = (h ^ p[i]) * 16777619u;
    return h;
}

/* The value of an atom named by raw bytes (cached); err_at is the offset the pure codec names. */
static PyObject *atom_value(Dec *d, const unsigned char *raw, Py_ssize_t n, int kind,
                            Py_ssize_t err_at) {
    MapState *ms = d->ms;
    uint32_t h = name_hash(raw, n, kind);
    AtomSlot *slot = &ms->cache[h & (ACACHE_SIZE - 1)];
    if (slot->raw && slot->hash == h && slot->kind == kind && PyBytes_GET_SIZE(slot->raw) == n &&
        memcmp(PyBytes_AS_STRING(slot->raw), raw, (size_t)n) == 0) {
        Py_INCREF(slot->value);
        return slot->value;
    }
    int utf8 = kind & 1, plain = kind & 2;
    PyObject *name = utf8 ? PyUnicode_DecodeUTF8((const char *)raw, n, "strict")
                          : PyUnicode_DecodeLatin1((const char *)raw, n, "strict");
    if (!name) {
        if (!PyErr_ExceptionMatches(PyExc_UnicodeDecodeError)) return NULL;
        PyErr_Clear();
        return plain ? derr(err_at, "invalid atom") : derr(err_at, "atom name is not valid UTF-8");
    }
    if (PyUnicode_GET_LENGTH(name) > 255) {
        Py_ssize_t chars = PyUnicode_GET_LENGTH(name);
        Py_DECREF(name);
        return plain ? derr(err_at, "invalid atom")
                     : derr(err_at, "atom has %zd characters (at most 255)", chars);
    }
    PyObject *value;
    if (!plain) {
        value = PyDict_GetItemWithError(ms->special, name);
        if (value) {
            Py_INCREF(value);
            Py_DECREF(name);
        } else if (PyErr_Occurred()) {
            Py_DECREF(name);
            return NULL;
        } else if (ms->atom_as_str) {
            value = name;
        } else {
            value = make(AtomType, 1, &name);
        }
    } else {
        value = make(AtomType, 1, &name);
    }
    if (!value) return NULL;
    PyObject *key = PyBytes_FromStringAndSize((const char *)raw, n);
    if (!key) { Py_DECREF(value); return NULL; }
    /* Re-read the slot: Atom() ran Python code, which may have filled it meanwhile. */
    PyObject *old_raw = slot->raw, *old_value = slot->value;
    slot->raw = key;
    Py_INCREF(value);
    slot->value = value;
    slot->hash = h;
    slot->kind = kind;
    Py_XDECREF(old_raw);
    Py_XDECREF(old_value);
    return value;
}

static PyObject *cached_atom(Dec *d, int index, Py_ssize_t offset) {
    if (!d->atom_cache)
        return derr(offset, "ATOM_CACHE_REF outside a distribution message (no atom cache)");
    if (PyList_CheckExact(d->atom_cache)) {
        if (index < PyList_GET_SIZE(d->atom_cache)) {
            PyObject *v = PyList_GET_ITEM(d->atom_cache, index);
            Py_INCREF(v);
            return v;
        }
        return derr(offset, "atom cache entry %d is not set", index);
    }
    PyObject *key = PyLong_FromLong(index);
    if (!key) return NULL;
    PyObject *v = PyObject_GetItem(d->atom_cache, key);
    Py_DECREF(key);
    if (!v && (PyErr_ExceptionMatches(PyExc_IndexError) || PyErr_ExceptionMatches(PyExc_KeyError))) {
        PyErr_Clear();
        return derr(offset, "atom cache entry %d is not set", index);
    }
    return v;
}

/* An atom field of a structure (node, module): always an Atom. */
static PyObject *plain_atom(Dec *d, Py_ssize_t pos, Py_ssize_t *end) {
    const unsigned char *b = d->buf;
    NEED_AT(pos, 1);
    int tag = b[pos];
    if (tag == T_SMALL_ATOM_UTF8 || tag == T_ATOM_UTF8 || tag == T_ATOM || tag == T_SMALL_ATOM) {
        Py_ssize_t n, start;
        if (tag == T_SMALL_ATOM_UTF8 || tag == T_SMALL_ATOM) {
            NEED_AT(pos + 1, 1);
            n = b[pos + 1];
            start = pos + 2;
        } else {
            NEED_AT(pos + 1, 2);
            n = rd16(b + pos + 1);
            start = pos + 3;
        }
        if (n > d->len - start) return derr(pos, "atom runs past the end of the input");
        int utf8 = tag == T_SMALL_ATOM_UTF8 || tag == T_ATOM_UTF8;
        *end = start + n;
        return atom_value(d, b + start, n, utf8 ? K_PLAIN_UTF8 : K_PLAIN_LATIN1, pos);
    }
    if (tag == T_ATOM_CACHE_REF) {
        NEED_AT(pos + 1, 1);
        PyObject *v = cached_atom(d, b[pos + 1], pos);
        if (!v) return NULL;
        *end = pos + 2;
        if (Py_TYPE(v) == (PyTypeObject *)AtomType) return v;
        PyObject *s = PyObject_Str(v);
        Py_DECREF(v);
        return make(AtomType, 1, &s);
    }
    return derr(pos, "expected an atom, found tag %d", tag);
}

static PyObject *small_int_field(Dec *d, Py_ssize_t pos, Py_ssize_t *end) {
    NEED_AT(pos, 1);
    int tag = d->buf[pos];
    if (tag == T_SMALL_INTEGER) {
        NEED_AT(pos + 1, 1);
        *end = pos + 2;
        return PyLong_FromLong(d->buf[pos + 1]);
    }
    if (tag == T_INTEGER) {
        NEED_AT(pos + 1, 4);
        *end = pos + 5;
        return PyLong_FromLong((int32_t)rd32(d->buf + pos + 1));
    }
    return derr(pos, "expected an integer, found tag %d", tag);
}

static PyObject *list_to_str(PyObject *items) {
    Py_ssize_t n = PyList_GET_SIZE(items);
    Py_UCS4 maxchar = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *c = PyList_GET_ITEM(items, i);
        if (!PyLong_CheckExact(c)) return items;
        int overflow;
        long v = PyLong_AsLongAndOverflow(c, &overflow);
        if (overflow || v < 0 || v > 0x10FFFF || (v >= 0xD800 && v <= 0xDFFF)) return items;
        if ((Py_UCS4)v > maxchar) maxchar = (Py_UCS4)v;
    }
    PyObject *s = PyUnicode_New(n, maxchar);
    if (!s) { Py_DECREF(items); return NULL; }
    int kind = PyUnicode_KIND(s);
    void *data = PyUnicode_DATA(s);
    for (Py_ssize_t i = 0; i < n; i++)
        PyUnicode_WRITE(kind, data, i, (Py_UCS4)PyLong_AsLong(PyList_GET_ITEM(items, i)));
    Py_DECREF(items);
    return s;
}

/* Append src's items to *items (which may be NULL or empty: then src replaces it). Steals src. */
static int list_join(PyObject **items, PyObject *src) {
    if (!*items || PyList_GET_SIZE(*items) == 0) {
        Py_XSETREF(*items, src);
        return 0;
    }
    int rc = PyList_SetSlice(*items, PY_SSIZE_T_MAX, PY_SSIZE_T_MAX, src);
    Py_DECREF(src);
    return rc;
}

static inline PyObject *dec_item(Dec *d, int depth) {
    /* Integers and binaries inline, where dec() would take them (errors included): most lists,
     * tuples and maps are full of them, and a test per call site predicts better than one
     * shared switch. */
    Py_ssize_t pos = d->pos;
    const unsigned char *b = d->buf;
    if (pos + 1 < d->len && b[pos] == T_SMALL_INTEGER) {
        d->pos = pos + 2;
        return Py_NewRef(small_ints[b[pos + 1]]);
    }
    if (pos + 4 < d->len) {
        if (b[pos] == T_INTEGER) {
            d->pos = pos + 5;
            return PyLong_FromLong((int32_t)rd32(b + pos + 1));
        }
        if (b[pos] == T_BINARY) {
            Py_ssize_t n = rd32(b + pos + 1);
            if (n <= d->len - (pos + 5) && n <= d->memory_left) { /* else dec() says why */
                d->memory_left -= n; /* as charge(d, 0, n, ...) */
                d->pos = pos + 5 + n;
                return binary_value(d, b + pos + 5, n);
            }
        }
    }
    return dec(d, depth);
}

static PyObject *decode_list(Dec *d, Py_ssize_t start, int depth) {
    const unsigned char *b = d->buf;
    depth++;
    if (depth_error(d, depth, start) < 0) return NULL;
    PyObject *items = NULL; /* the first LIST_EXT's list, then the chunks joined */
    Py_ssize_t pos = start;
    for (;;) {
        /* One LIST_EXT (BEAM writes one per list; others may chain them through the tail). */
        if (d->len - (pos + 1) < 4) { Py_XDECREF(items); return eof(d); }
        Py_ssize_t n = rd32(b + pos + 1);
        pos += 5;
        if (n > d->len - pos) {
            Py_XDECREF(items);
            return derr(pos - 5, "list of %zd elements is longer than the input", n);
        }
        if (charge(d, n, CONTAINER_COST + (long long)LIST_ITEM_COST * n, pos - 5) < 0) {
            Py_XDECREF(items);
            return NULL;
        }
        PyObject *chunk = PyList_New(n);
        if (!chunk) { Py_XDECREF(items); return NULL; }
        hold(d, chunk);
        d->pos = pos;
        for (Py_ssize_t i = 0; i < n; i++) {
            PyObject *item = dec_item(d, depth);
            if (!item) { Py_DECREF(chunk); Py_XDECREF(items); return NULL; }
            PyList_SET_ITEM(chunk, i, item);
        }
        pos = d->pos;
        if (list_join(&items, chunk) < 0) { Py_XDECREF(items); return NULL; }
        if (pos >= d->len) { Py_XDECREF(items); return eof(d); }
        int tag = b[pos];
        if (tag == T_NIL) { pos++; break; }
        if (tag == T_LIST) continue;
        if (charge(d, 1, TERM_COST, pos) < 0) { Py_XDECREF(items); return NULL; }
        d->pos = pos;
        PyObject *tail = dec(d, depth);
        if (!tail) { Py_XDECREF(items); return NULL; }
        if (PyList_CheckExact(tail)) { /* a STRING_EXT or [] tail: still a proper list */
            if (list_join(&items, tail) < 0) { Py_XDECREF(items); return NULL; }
            pos = d->pos;
            break;
        }
        if (PyList_GET_SIZE(items) == 0) { Py_XDECREF(items); return tail; }
        PyObject *args[2] = {items, tail};
        return make(ImproperListType, 2, args);
    }
    d->pos = pos;
    if (d->ms->string_as_str && PyList_GET_SIZE(items) > 0) return list_to_str(items);
    return items;
}

static PyObject *decode_map(Dec *d, Py_ssize_t pos, int depth) {
    NEED_AT(pos, 4);
    Py_ssize_t n = rd32(d->buf + pos);
    pos += 4;
    if (2 * n > d->len - pos) return derr(pos - 5, "map of %zd pairs is longer than the input", n);
    depth++;
    if (depth_error(d, depth, pos - 5) < 0) return NULL;
    if (charge(d, 2 * n, CONTAINER_COST + (long long)(MAP_PAIR_COST + 2 * TERM_COST) * n, pos - 5) < 0)
        return NULL;
#if PY_VERSION_HEX < 0x030D0000
    PyObject *dict = _PyDict_NewPresized(n);
#else
    PyObject *dict = PyDict_New();
#endif
    PyObject *pairs = NULL; /* set once a dict cannot hold the map */
    int track = 0;          /* the dict holds a container: tracked again on the way out */
    if (!dict) return NULL;
    d->pos = pos;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *key = dec_item(d, depth);
        if (!key) goto fail;
        PyObject *value = dec_item(d, depth);
        if (!value) { Py_DECREF(key); goto fail; }
        if (!pairs) {
            Py_ssize_t before = PyDict_GET_SIZE(dict);
            if (PyDict_SetDefault(dict, key, value) && PyDict_GET_SIZE(dict) == before + 1) {
                /* A held (untracked) tuple does not make the dict tracked as it would have. */
                if (!track && (held_tuple(key) || held_tuple(value))) track = 1;
                Py_DECREF(key);
                Py_DECREF(value);
                continue;
            }
            if (PyErr_Occurred()) {
                if (!PyErr_ExceptionMatches(PyExc_TypeError)) {
                    Py_DECREF(key); Py_DECREF(value); goto fail;
                }
                PyErr_Clear();
            }
            /* Unhashable key, or one Python merges with an earlier key (1 and 1.0): the pairs
             * so far are the dict's, in order (nothing was merged before this one). */
            pairs = PyList_New(0);
            if (!pairs) { Py_DECREF(key); Py_DECREF(value); goto fail; }
            Py_ssize_t it = 0;
            PyObject *k, *v;
            while (PyDict_Next(dict, &it, &k, &v)) {
                PyObject *pair = PyTuple_Pack(2, k, v);
                if (!pair || PyList_Append(pairs, pair) < 0) {
                    Py_XDECREF(pair); Py_DECREF(key); Py_DECREF(value); goto fail;
                }
                Py_DECREF(pair);
            }
        }
        PyObject *pair = PyTuple_New(2);
        if (!pair) { Py_DECREF(key); Py_DECREF(value); goto fail; }
        PyTuple_SET_ITEM(pair, 0, key);
        PyTuple_SET_ITEM(pair, 1, value);
        int rc = PyList_Append(pairs, pair);
        Py_DECREF(pair);
        if (rc < 0) goto fail;
    }
    if (pairs) {
        Py_DECREF(dict);
        return make(MapType, 1, &pairs);
    }
    if (PyObject_GC_IsTracked(dict)) hold(d, dict); /* it holds a container */
    else if (track) hold_untracked(d, dict);
    return dict;
fail:
    Py_DECREF(dict);
    Py_XDECREF(pairs);
    return NULL;
}

static PyObject *decode_fun_rest(Dec *d, Py_ssize_t pos, Py_ssize_t start, int depth,
                                 Py_ssize_t num_free, long arity, const unsigned char *uniq,
                                 uint32_t index, Py_ssize_t size, PyObject *pid) {
    PyObject *module = NULL, *old_index = NULL, *old_uniq = NULL, *free = NULL;
    if (num_free > d->len - pos) {
        Py_XDECREF(pid);
        return derr(start, "fun with %zd free variables is longer than the input", num_free);
    }
    depth++;
    if (depth_error(d, depth, start) < 0) goto fail;
    if (charge(d, num_free + (pid == NULL), CONTAINER_COST + (long long)LIST_ITEM_COST * num_free,
               start) < 0)
        goto fail;
    if (!(module = plain_atom(d, pos, &pos))) goto fail;
    if (!(old_index = small_int_field(d, pos, &pos))) goto fail;
    if (!(old_uniq = small_int_field(d, pos, &pos))) goto fail;
    if (!pid) {
        d->pos = pos;
        if (!(pid = dec(d, depth))) goto fail;
        pos = d->pos;
    }
    if (Py_TYPE(pid) != (PyTypeObject *)PidType) {
        derr(start, "the pid field of a fun is not a pid");
        goto fail;
    }
    if (!(free = PyTuple_New(num_free))) goto fail;
    if (num_free) hold(d, free);
    d->pos = pos;
    for (Py_ssize_t i = 0; i < num_free; i++) {
        PyObject *item = dec(d, depth);
        if (!item) goto fail;
        PyTuple_SET_ITEM(free, i, item);
    }
    pos = d->pos;
    if (size >= 0 && pos - start - 1 != size) { /* Size counts itself, not the tag */
        derr(start, "fun size field says %zd bytes, found %zd", size, pos - start - 1);
        goto fail;
    }
    PyObject *args[8] = {module, old_index, old_uniq, pid, free, NULL, NULL, NULL};
    if (arity < 0) {
        args[5] = Py_NewRef(Py_None);
        args[6] = Py_NewRef(Py_None);
        args[7] = Py_NewRef(Py_None);
    } else {
        args[5] = PyLong_FromLong(arity);
        args[6] = PyBytes_FromStringAndSize((const char *)uniq, 16);
        args[7] = PyLong_FromUnsignedLong(index);
    }
    return make(FunType, 8, args);
fail:
    Py_XDECREF(module);
    Py_XDECREF(old_index);
    Py_XDECREF(old_uniq);
    Py_XDECREF(pid);
    Py_XDECREF(free);
    return NULL;
}

static PyObject *decode_local(Dec *d, Py_ssize_t pos) {
    /* LOCAL_EXT is opaque to everyone but the node that wrote it: the pure codec's lenient walk
     * finds its end (rare, so the copy into bytes does not matter). */
    Py_ssize_t start = pos - 1;
    if (pos + 4 > d->len) return derr(start, "LOCAL_EXT runs past the end of the input");
    PyObject *data = PyBytes_FromStringAndSize((const char *)d->buf, d->len);
    if (!data) return NULL;
    PyObject *walker = PyObject_CallFunctionObjArgs(pure_local_decoder, d->mapping, d->limits, NULL);
    PyObject *result = NULL;
    if (walker) result = PyObject_CallFunction(walker, "On", data, pos + 4);
    Py_XDECREF(walker);
    Py_DECREF(data);
    if (!result) {
        if (PyErr_ExceptionMatches(PyExc_IndexError) || PyErr_ExceptionMatches(StructError)) {
            PyErr_Clear();
            return eof(d);
        }
        if (PyErr_ExceptionMatches(PyExc_RecursionError)) {
            PyErr_Clear();
            return derr(d->top, "nesting too deep for the Python stack; lower max_depth");
        }
        return NULL;
    }
    Py_ssize_t end = -1;
    if (PyTuple_Check(result) && PyTuple_GET_SIZE(result) == 2)
        end = PyLong_AsSsize_t(PyTuple_GET_ITEM(result, 1));
    Py_DECREF(result);
    if (end < start) {
        if (!PyErr_Occurred()) PyErr_SetString(PyExc_SystemError, "LOCAL_EXT walk gave a bad end");
        return NULL;
    }
    if (end > d->len) return eof(d); /* as the pure codec: the walk found a field cut short */
    if (charge(d, 0, end - start, start) < 0) return NULL;
    d->pos = end;
    PyObject *raw = PyBytes_FromStringAndSize((const char *)d->buf + start, end - start);
    return make(LocalTermType, 1, &raw);
}

static PyObject *decode_rare(Dec *d, Py_ssize_t pos, int tag, int depth) {
    const unsigned char *b = d->buf;
    Py_ssize_t start = pos - 1;
    PyObject *node;
    switch (tag) {
    case T_NEW_PID: case T_PID: case T_NEWER_REFERENCE: case T_NEW_REFERENCE: case T_REFERENCE:
    case T_NEW_PORT: case T_PORT: case T_V4_PORT: case T_EXPORT:
        if (charge(d, 0, STRUCT_COST, start) < 0) return NULL;
        break;
    case T_FUN:
        if (charge(d, 1, TERM_COST, start) < 0) return NULL; /* its pid, decoded first */
        break;
    default:
        break;
    }
    switch (tag) {
    case T_NEW_PID:
    case T_PID: {
        if (!(node = plain_atom(d, pos, &pos))) return NULL;
        PyObject *args[4] = {node, NULL, NULL, NULL};
        if (tag == T_NEW_PID) {
            if (d->len - pos < 12) { Py_DECREF(node); return eof(d); }
            args[1] = PyLong_FromUnsignedLong(rd32(b + pos));
            args[2] = PyLong_FromUnsignedLong(rd32(b + pos + 4));
            args[3] = PyLong_FromUnsignedLong(rd32(b + pos + 8));
            d->pos = pos + 12;
        } else {
            if (d->len - pos < 9) { Py_DECREF(node); return eof(d); }
            args[1] = PyLong_FromUnsignedLong(rd32(b + pos));
            args[2] = PyLong_FromUnsignedLong(rd32(b + pos + 4));
            args[3] = PyLong_FromLong(b[pos + 8]);
            d->pos = pos + 9;
        }
        return make_slotted(&pid_slots, PidType, args);
    }
    case T_NEWER_REFERENCE:
    case T_NEW_REFERENCE: {
        NEED_AT(pos, 2);
        Py_ssize_t n = rd16(b + pos);
        if (n < 1 || n > 5) return derr(start, "reference with %zd id words (1 to 5 allowed)", n);
        if (!(node = plain_atom(d, pos + 2, &pos))) return NULL;
        PyObject *args[3] = {node, NULL, NULL};
        Py_ssize_t need = (tag == T_NEWER_REFERENCE ? 4 : 1);
        if (d->len - pos < need) { Py_DECREF(node); return eof(d); }
        args[1] = tag == T_NEWER_REFERENCE ? PyLong_FromUnsignedLong(rd32(b + pos))
                                           : PyLong_FromLong(b[pos]);
        pos += need;
        if (d->len - pos < 4 * n) { Py_DECREF(node); Py_XDECREF(args[1]); return eof(d); }
        args[2] = PyTuple_New(n);
        if (args[2]) {
            for (Py_ssize_t i = 0; i < n; i++) {
                PyObject *w = PyLong_FromUnsignedLong(rd32(b + pos + 4 * i));
                if (!w) { Py_CLEAR(args[2]); break; }
                PyTuple_SET_ITEM(args[2], i, w);
            }
        }
        d->pos = pos + 4 * n;
        return make_slotted(&ref_slots, ReferenceType, args);
    }
    case T_REFERENCE: {
        if (!(node = plain_atom(d, pos, &pos))) return NULL;
        if (d->len - pos < 5) { Py_DECREF(node); return eof(d); }
        PyObject *args[3] = {node, PyLong_FromLong(b[pos + 4]), NULL};
        PyObject *id = PyLong_FromUnsignedLong(rd32(b + pos));
        args[2] = id ? PyTuple_Pack(1, id) : NULL;
        Py_XDECREF(id);
        d->pos = pos + 5;
        return make_slotted(&ref_slots, ReferenceType, args);
    }
    case T_NEW_PORT:
    case T_PORT:
    case T_V4_PORT: {
        if (!(node = plain_atom(d, pos, &pos))) return NULL;
        PyObject *args[4] = {node, NULL, NULL, PyBool_FromLong(tag == T_V4_PORT)};
        Py_ssize_t need = tag == T_V4_PORT ? 12 : tag == T_NEW_PORT ? 8 : 5;
        if (d->len - pos < need) {
            Py_DECREF(node); Py_DECREF(args[3]);
            return eof(d);
        }
        if (tag == T_V4_PORT) {
            args[1] = PyLong_FromUnsignedLongLong(rd64(b + pos));
            args[2] = PyLong_FromUnsignedLong(rd32(b + pos + 8));
        } else if (tag == T_NEW_PORT) {
            args[1] = PyLong_FromUnsignedLong(rd32(b + pos));
            args[2] = PyLong_FromUnsignedLong(rd32(b + pos + 4));
        } else {
            args[1] = PyLong_FromUnsignedLong(rd32(b + pos));
            args[2] = PyLong_FromLong(b[pos + 4]);
        }
        d->pos = pos + need;
        return make_slotted(&port_slots, PortType, args);
    }
    case T_BIT_BINARY: {
        NEED_AT(pos, 5);
        Py_ssize_t n = rd32(b + pos);
        int bits = b[pos + 4];
        pos += 5;
        if (n > d->len - pos) return derr(start, "bitstring of %zd bytes runs past the end of the input", n);
        if (bits < 1 || bits > 8 || (n == 0 && bits != 8))
            return derr(start, "bitstring with %d bits in its last byte", bits);
        if (charge(d, 0, n, start) < 0) return NULL;
        PyObject *raw = PyBytes_FromStringAndSize((const char *)b + pos, n);
        d->pos = pos + n;
        if (bits == 8 || !raw) return raw;
        PyObject *args[2] = {raw, PyLong_FromSsize_t((n - 1) * 8 + bits)};
        return make(BitStringType, 2, args);
    }
    case T_FLOAT: {
        if (31 > d->len - pos) return derr(start, "float runs past the end of the input");
        /* BEAM's grammar (erts sys_chars_to_double): [+-]digits[.,]digits([eE][+-]digits), then
         * the NUL that ends it inside the field (BEAM reads past a field without one). */
        char text[32];
        memcpy(text, b + pos, 31);
        text[31] = 1; /* not a NUL: a field without one fails below */
        const char *s = text;
        if (*s == '+' || *s == '-') s++;
        int ok = *s >= '0' && *s <= '9';
        while (*s >= '0' && *s <= '9') s++;
        ok = ok && (*s == '.' || *s == ',');
        if (ok) {
            text[s - text] = '.';
            s++;
            ok = *s >= '0' && *s <= '9';
            while (*s >= '0' && *s <= '9') s++;
        }
        if (ok && (*s == 'e' || *s == 'E')) {
            s++;
            if (*s == '+' || *s == '-') s++;
            ok = *s >= '0' && *s <= '9';
            while (*s >= '0' && *s <= '9') s++;
        }
        if (!ok || *s != 0) return derr(start, "malformed FLOAT_EXT text");
        /* Python's own correctly rounded parser, as float() in the pure codec; the text is
         * plain ASCII digits by now, so only a failed allocation can make it fail. */
        double value = PyOS_string_to_double(text, NULL, NULL);
        if (value == -1.0 && PyErr_Occurred()) return NULL;
        if (!isfinite(value)) return derr(start, "NaN or infinite float");
        d->pos = pos + 31;
        return PyFloat_FromDouble(value);
    }
    case T_EXPORT: {
        PyObject *args[3] = {NULL, NULL, NULL};
        if (!(args[0] = plain_atom(d, pos, &pos))) return NULL;
        if (!(args[1] = plain_atom(d, pos, &pos))) { Py_DECREF(args[0]); return NULL; }
        if (pos >= d->len || (b[pos] == T_SMALL_INTEGER && pos + 1 >= d->len)) {
            Py_DECREF(args[0]); Py_DECREF(args[1]);
            return eof(d);
        }
        if (b[pos] != T_SMALL_INTEGER) {
            Py_DECREF(args[0]); Py_DECREF(args[1]);
            return derr(pos, "export fun arity is not a small integer");
        }
        args[2] = PyLong_FromLong(b[pos + 1]);
        d->pos = pos + 2;
        return make(ExportFunType, 3, args);
    }
    case T_NEW_FUN: {
        NEED_AT(pos, 29);
        Py_ssize_t size = rd32(b + pos);
        long arity = b[pos + 4];
        const unsigned char *uniq = b + pos + 5;
        uint32_t index = rd32(b + pos + 21);
        Py_ssize_t num_free = rd32(b + pos + 25);
        pos += 29;
        if (size > d->len - start) return derr(start, "fun runs past the end of the input");
        return decode_fun_rest(d, pos, start, depth, num_free, arity, uniq, index, size, NULL);
    }
    case T_FUN: {
        NEED_AT(pos, 4);
        Py_ssize_t num_free = rd32(b + pos);
        d->pos = pos + 4;
        PyObject *pid = dec(d, depth);
        if (!pid) return NULL;
        return decode_fun_rest(d, d->pos, start, depth, num_free, -1, NULL, 0, -1, pid);
    }
    case T_LOCAL:
        return decode_local(d, pos);
    case T_COMPRESSED:
        return derr(start, "a compressed term can only be the whole input");
    case T_VERSION:
        return derr(start, "version byte (131) inside a term");
    default:
        return derr(start, "unknown tag %d", tag);
    }
}

static PyObject *dec(Dec *d, int depth) {
    const unsigned char *b = d->buf;
    Py_ssize_t pos = d->pos;
    if (pos >= d->len) return eof(d);
    int tag = b[pos++];
    switch (tag) {
    case T_SMALL_INTEGER:
        NEED_AT(pos, 1);
        d->pos = pos + 1;
        return Py_NewRef(small_ints[b[pos]]);
    case T_INTEGER:
        NEED_AT(pos, 4);
        d->pos = pos + 4;
        return PyLong_FromLong((int32_t)rd32(b + pos));
    case T_BINARY: {
        NEED_AT(pos, 4);
        Py_ssize_t n = rd32(b + pos);
        pos += 4;
        if (n > d->len - pos) return derr(pos - 5, "binary of %zd bytes runs past the end of the input", n);
        if (charge(d, 0, n, pos - 5) < 0) return NULL;
        d->pos = pos + n;
        return binary_value(d, b + pos, n);
    }
    case T_SMALL_ATOM_UTF8:
    case T_ATOM:
    case T_ATOM_UTF8:
    case T_SMALL_ATOM: {
        Py_ssize_t n;
        if (tag == T_SMALL_ATOM_UTF8 || tag == T_SMALL_ATOM) {
            NEED_AT(pos, 1);
            n = b[pos++];
        } else {
            NEED_AT(pos, 2);
            n = rd16(b + pos);
            pos += 2;
        }
        if (n > d->len - pos) return derr(pos - 1, "atom runs past the end of the input");
        d->pos = pos + n;
        int utf8 = tag == T_SMALL_ATOM_UTF8 || tag == T_ATOM_UTF8;
        return atom_value(d, b + pos, n, utf8 ? K_UTF8 : K_LATIN1, pos);
    }
    case T_SMALL_TUPLE:
    case T_LARGE_TUPLE: {
        Py_ssize_t n;
        if (tag == T_SMALL_TUPLE) {
            NEED_AT(pos, 1);
            n = b[pos++];
        } else {
            NEED_AT(pos, 4);
            n = rd32(b + pos);
            pos += 4;
            if (n > d->len - pos) return derr(pos - 5, "tuple of %zd elements is longer than the input", n);
        }
        depth++;
        if (depth_error(d, depth, pos - 1) < 0) return NULL;
        if (charge(d, n, CONTAINER_COST + (long long)LIST_ITEM_COST * n,
                   tag == T_SMALL_TUPLE ? pos - 2 : pos - 5) < 0)
            return NULL;
        PyObject *t = PyTuple_New(n);
        if (!t) return NULL;
        if (n) hold(d, t); /* () is an untracked singleton */
        d->pos = pos;
        for (Py_ssize_t i = 0; i < n; i++) {
            PyObject *item = dec_item(d, depth);
            if (!item) { Py_DECREF(t); return NULL; }
            PyTuple_SET_ITEM(t, i, item);
        }
        return t;
    }
    case T_LIST:
        return decode_list(d, pos - 1, depth);
    case T_NIL: {
        if (charge(d, 0, CONTAINER_COST, pos - 1) < 0) return NULL;
        d->pos = pos;
        PyObject *empty = PyList_New(0);
        if (empty) hold(d, empty); /* lists are tracked when made, even empty ones */
        return empty;
    }
    case T_STRING: {
        NEED_AT(pos, 2);
        Py_ssize_t n = rd16(b + pos);
        pos += 2;
        if (n > d->len - pos) return derr(pos - 3, "string of %zd bytes runs past the end of the input", n);
        if (charge(d, n, CONTAINER_COST + (long long)LIST_ITEM_COST * n, pos - 3) < 0) return NULL;
        d->pos = pos + n;
        if (d->ms->string_as_str) return PyUnicode_DecodeLatin1((const char *)b + pos, n, NULL);
        PyObject *list = PyList_New(n);
        if (!list) return NULL;
        for (Py_ssize_t i = 0; i < n; i++) PyList_SET_ITEM(list, i, Py_NewRef(small_ints[b[pos + i]]));
        hold(d, list);
        return list;
    }
    case T_NEW_FLOAT: {
        NEED_AT(pos, 8);
        uint64_t bits = rd64(b + pos);
        double value;
        memcpy(&value, &bits, sizeof value);
        if (!isfinite(value)) return derr(pos - 1, "NaN or infinite float");
        d->pos = pos + 8;
        return PyFloat_FromDouble(value);
    }
    case T_MAP:
        return decode_map(d, pos, depth);
    case T_SMALL_BIG:
    case T_LARGE_BIG: {
        Py_ssize_t start = pos - 1, n;
        if (tag == T_SMALL_BIG) {
            NEED_AT(pos, 1);
            n = b[pos++];
        } else {
            NEED_AT(pos, 4);
            n = rd32(b + pos);
            pos += 4;
        }
        NEED_AT(pos, 1);
        int sign = b[pos++];
        if (n > d->len - pos) return derr(start, "integer of %zd bytes runs past the end of the input", n);
        if (sign > 1) return derr(start, "bad integer sign byte %d", sign);
        if (charge(d, 0, n, start) < 0) return NULL;
        d->pos = pos + n;
        PyObject *number;
        if (n <= 8) {
            uint64_t v = 0;
            for (Py_ssize_t i = n - 1; i >= 0; i--) v = (v << 8) | b[pos + i];
            if (!sign) return PyLong_FromUnsignedLongLong(v);
            if (v <= (uint64_t)LLONG_MAX) return PyLong_FromLongLong(-(long long)v);
            number = PyLong_FromUnsignedLongLong(v);
        } else {
#if PY_VERSION_HEX < 0x030D0000
            number = _PyLong_FromByteArray(b + pos, (size_t)n, 1, 0);
#else
            number = PyLong_FromUnsignedNativeBytes(
                b + pos, (size_t)n, Py_ASNATIVEBYTES_LITTLE_ENDIAN | Py_ASNATIVEBYTES_UNSIGNED_BUFFER);
#endif
        }
        if (!number || !sign) return number;
        PyObject *negative = PyNumber_Negative(number);
        Py_DECREF(number);
        return negative;
    }
    case T_ATOM_CACHE_REF: {
        NEED_AT(pos, 1);
        PyObject *value = cached_atom(d, b[pos], pos - 1);
        if (!value) return NULL;
        d->pos = pos + 1;
        if (Py_TYPE(value) == (PyTypeObject *)AtomType || PyUnicode_CheckExact(value)) {
            PyObject *found = PyDict_GetItemWithError(d->ms->special, value);
            if (found) {
                Py_INCREF(found);
                Py_SETREF(value, found);
            } else if (PyErr_Occurred()) {
                Py_DECREF(value);
                return NULL;
            } else if (d->ms->atom_as_str) {
                Py_SETREF(value, PyObject_Str(value));
            }
        }
        return value;
    }
    default:
        return decode_rare(d, pos, tag, depth);
    }
}

/* Limits are read once per distinct object (they are frozen). */
static PyObject *last_limits;
static long long last_max_depth, last_max_size, last_max_terms, last_max_memory;

/* A positive int attribute; values past what C holds are as good as unlimited. */
static int read_limit(PyObject *limits, PyObject *name, long long *out) {
    PyObject *v = PyObject_GetAttr(limits, name);
    if (!v) return -1;
    int overflow;
    long long value = PyLong_AsLongLongAndOverflow(v, &overflow);
    Py_DECREF(v);
    if (value == -1 && PyErr_Occurred()) return -1;
    *out = overflow > 0 ? LLONG_MAX : value;
    return 0;
}

/* Limits' fields (max_size and the budget may be NULL when not wanted). */
static int read_limits(PyObject *limits, long *max_depth, long long *max_size, long long *max_terms,
                       long long *max_memory) {
    if (limits != last_limits) {
        long long depth, size, terms, memory;
        if (read_limit(limits, s_max_depth, &depth) < 0 || read_limit(limits, s_max_size, &size) < 0 ||
            read_limit(limits, s_max_terms, &terms) < 0 || read_limit(limits, s_max_memory, &memory) < 0)
            return -1;
        Py_INCREF(limits);
        Py_XSETREF(last_limits, limits);
        last_max_depth = depth > LONG_MAX ? LONG_MAX : depth;
        last_max_size = size;
        last_max_terms = terms;
        last_max_memory = memory;
    }
    *max_depth = (long)last_max_depth;
    if (max_size) *max_size = last_max_size;
    if (max_terms) *max_terms = last_max_terms;
    if (max_memory) *max_memory = last_max_memory;
    return 0;
}

/* Borrow a contiguous byte view of `data` without copying; objects that do not export one are
 * converted with bytes(), as the pure codec does for everything. */
static int get_view(PyObject *data, Py_buffer *view, PyObject **holder) {
    *holder = NULL;
    if (PyObject_GetBuffer(data, view, PyBUF_SIMPLE) == 0) return 0;
    PyErr_Clear();
    PyObject *copy = PyObject_CallOneArg((PyObject *)&PyBytes_Type, data);
    if (!copy) return -1;
    if (PyObject_GetBuffer(copy, view, PyBUF_SIMPLE) < 0) { Py_DECREF(copy); return -1; }
    *holder = copy;
    return 0;
}

/* Parse fastcall arguments by position or keyword into out[] (defaults preset by the caller). */
static int parse_args(const char *fname, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames,
                      const char *const *names, int nmax, int nreq, PyObject **out) {
    if (nargs > nmax) {
        PyErr_Format(PyExc_TypeError, "%s() takes at most %d arguments (%zd given)", fname, nmax, nargs);
        return -1;
    }
    for (Py_ssize_t i = 0; i < nargs; i++) out[i] = args[i];
    int seen = (int)nargs;
    if (kwnames) {
        for (Py_ssize_t k = 0; k < PyTuple_GET_SIZE(kwnames); k++) {
            PyObject *key = PyTuple_GET_ITEM(kwnames, k);
            int j = 0;
            for (; j < nmax; j++)
                if (PyUnicode_CompareWithASCIIString(key, names[j]) == 0) break;
            if (j == nmax) {
                PyErr_Format(PyExc_TypeError, "%s() got an unexpected keyword argument %R", fname, key);
                return -1;
            }
            if (j < nargs) {
                PyErr_Format(PyExc_TypeError, "%s() got multiple values for argument %R", fname, key);
                return -1;
            }
            out[j] = args[nargs + k];
            if (j + 1 > seen) seen = j + 1;
        }
    }
    for (int i = 0; i < nreq; i++) {
        if (!out[i]) {
            PyErr_Format(PyExc_TypeError, "%s() missing required argument '%s'", fname, names[i]);
            return -1;
        }
    }
    return 0;
}

static PyObject *decode_term(Dec *d, Py_ssize_t offset);

static PyObject *run_decoder(Dec *d, PyObject *mapping, PyObject *limits, PyObject *atom_cache,
                             Py_ssize_t offset, int *temp_ms) {
    long max_depth;
    if (read_limits(limits, &max_depth, NULL, &d->max_terms, &d->max_memory) < 0) return NULL;
    d->ms = mapstate_get(mapping, temp_ms);
    if (!d->ms) return NULL;
    PyObject *held[HELD_INLINE], *bcache[BCACHE_SIZE]; /* cleared as they are used */
    d->held = held;
    d->n_held = 0;
    /* A small term makes too few containers for a collection to matter. */
    d->cap_held = d->len - offset < 256 ? 0 : HELD_INLINE;
    d->bcache = bcache;
    d->short_seen = d->bcache_off = 0;
    d->bcache_hits = d->bcache_tries = 0;
    d->max_depth = max_depth;
    d->terms_left = d->max_terms;
    d->memory_left = d->max_memory;
    d->atom_cache = atom_cache == Py_None ? NULL : atom_cache;
    d->mapping = mapping;
    d->limits = limits;
    d->pos = d->top = offset;
    PyObject *term = decode_term(d, offset);
    release_bcache(d);
    release_held(d); /* after an error too: a Python object may keep a part of the term */
    return term;
}

static PyObject *decode_term(Dec *d, Py_ssize_t offset) {
    if (charge(d, 1, TERM_COST, offset) < 0) return NULL;
    PyObject *term = dec(d, 0);
    if (!term && PyErr_ExceptionMatches(PyExc_RecursionError)) {
        /* Python code the decoder runs (hashing a map key of nested improper lists, a
         * constructor) ran out of stack: as the pure codec says it. */
        PyErr_Clear();
        derr(d->top, "nesting too deep for the Python stack; lower max_depth");
    }
    return term;
}

static PyObject *cterm_decode_body(PyObject *self, PyObject *const *args, Py_ssize_t nargs,
                                   PyObject *kwnames) {
    static const char *const names[] = {"data", "offset", "mapping", "limits", "atom_cache"};
    PyObject *a[5] = {NULL, NULL, default_mapping, default_limits, Py_None};
    if (parse_args("decode_body", args, nargs, kwnames, names, 5, 1, a) < 0) return NULL;
    Py_ssize_t offset = 0;
    if (a[1]) {
        offset = PyLong_AsSsize_t(a[1]);
        if (offset == -1 && PyErr_Occurred()) return NULL;
        if (offset < 0) {
            PyErr_SetString(PyExc_ValueError, "offset must not be negative");
            return NULL;
        }
    }
    Py_buffer view;
    PyObject *holder;
    if (get_view(a[0], &view, &holder) < 0) return NULL;
    Dec d = {.buf = view.buf, .len = view.len, .src = holder ? holder : a[0]};
    int temp = 0;
    PyObject *term = run_decoder(&d, a[2], a[3], a[4], offset, &temp);
    PyObject *result = NULL;
    if (term) {
        PyObject *end = PyLong_FromSsize_t(d.pos);
        if (end) {
            result = PyTuple_New(2);
            if (result) {
                PyTuple_SET_ITEM(result, 0, term);
                PyTuple_SET_ITEM(result, 1, end);
                term = NULL;
            } else {
                Py_DECREF(end);
            }
        }
        Py_XDECREF(term);
    }
    if (temp) mapstate_free(d.ms);
    PyBuffer_Release(&view);
    Py_XDECREF(holder);
    return result;
}

/* One distribution packet at b[pos:] in the usual form, a normal header whose atom cache
 * references are all known (memo: header bytes -> atoms, kept by the protocol). Returns 1 with
 * *control, *payload (new references), *frame_end and *used_end set; 0 when the packet is not
 * all there yet; 2 when the protocol must read it itself (a tick, an oversized length,
 * fragments, new atoms in the header, the pass-through form); -1 with an exception. */
static int dist_packet(const unsigned char *b, Py_ssize_t n, Py_ssize_t pos, long long max_frame,
                       PyObject *memo, PyObject *control_mapping, PyObject *mapping,
                       PyObject *limits, PyObject *no_payload, PyObject *payload_tags,
                       PyObject *src, PyObject **control, PyObject **payload,
                       Py_ssize_t *frame_end, Py_ssize_t *used_end) {
    if (n - pos < 4) return 0;
    uint32_t size = ((uint32_t)b[pos] << 24) | ((uint32_t)b[pos + 1] << 16) |
                    ((uint32_t)b[pos + 2] << 8) | (uint32_t)b[pos + 3];
    if (size < 3 || (long long)size > max_frame) return 2;
    if ((uint64_t)(n - pos - 4) < (uint64_t)size) return 0;
    const unsigned char *frame = b + pos + 4;
    if (frame[0] != T_VERSION || frame[1] != 'D') return 2;
    Py_ssize_t count = frame[2], off;
    PyObject *refs;
    if (count == 0) {
        refs = PyList_New(0);
        if (!refs) return -1;
        off = 3;
    } else {
        Py_ssize_t key_end = 3 + count / 2 + 1 + count;
        if (key_end > (Py_ssize_t)size) return 2;
        PyObject *key = PyBytes_FromStringAndSize((const char *)frame + 2, key_end - 2);
        if (!key) return -1;
        refs = PyDict_GetItemWithError(memo, key);
        Py_DECREF(key);
        if (!refs) return PyErr_Occurred() ? -1 : 2;
        Py_INCREF(refs);
        off = key_end;
    }
    int status = -1, temp = 0;
    Dec d = {.buf = frame, .len = (Py_ssize_t)size, .src = src};
    PyObject *c = run_decoder(&d, control_mapping, limits, refs, off, &temp), *p = NULL;
    if (temp) mapstate_free(d.ms);
    if (!c) goto done;
    Py_ssize_t used = d.pos;
    int with_payload = 0;
    if (PyTuple_CheckExact(c) && PyTuple_GET_SIZE(c) > 0 && PyLong_CheckExact(PyTuple_GET_ITEM(c, 0))) {
        with_payload = PySet_Contains(payload_tags, PyTuple_GET_ITEM(c, 0));
        if (with_payload < 0) goto done;
    }
    if (with_payload) {
        Dec e = {.buf = frame, .len = (Py_ssize_t)size, .src = src};
        temp = 0;
        p = run_decoder(&e, mapping, limits, refs, used, &temp);
        if (temp) mapstate_free(e.ms);
        if (!p) goto done;
        used = e.pos;
    } else {
        p = Py_NewRef(no_payload);
    }
    *control = c;
    *payload = p;
    c = p = NULL;
    *frame_end = pos + 4 + (Py_ssize_t)size;
    *used_end = pos + 4 + used;
    status = 1;
done:
    Py_XDECREF(c);
    Py_XDECREF(p);
    Py_DECREF(refs);
    return status;
}

/* The arguments both dist readers share: (buf, pos, max_frame, memo, control_mapping, mapping,
 * limits, no_payload, payload_tags). */
static int dist_args(const char *fname, PyObject *const *args, Py_ssize_t *pos, long long *max_frame) {
    *pos = PyLong_AsSsize_t(args[1]);
    if (*pos == -1 && PyErr_Occurred()) return -1;
    int overflow;
    *max_frame = PyLong_AsLongLongAndOverflow(args[2], &overflow);
    if (*max_frame == -1 && PyErr_Occurred()) return -1;
    if (overflow > 0) *max_frame = LLONG_MAX; /* past what C holds: no limit, as in the pure twin */
    if (!PyDict_Check(args[3]) || !PyAnySet_Check(args[8])) {
        PyErr_Format(PyExc_TypeError, "%s() wants a dict memo and a set of tags", fname);
        return -1;
    }
    return 0;
}

/* decode_dist(buf, pos, max_frame, memo, control_mapping, mapping, limits, no_payload,
 * payload_tags): the packet at buf[pos:] in the usual form (``dist_packet``). Returns (control,
 * payload, frame_end, used_end); None when the packet is not all there yet; False when the
 * protocol must read it itself. One call for what took seven Python calls. */
static PyObject *cterm_decode_dist(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 9) {
        PyErr_SetString(PyExc_TypeError, "decode_dist() takes 9 arguments");
        return NULL;
    }
    Py_ssize_t pos;
    long long max_frame;
    if (dist_args("decode_dist", args, &pos, &max_frame) < 0) return NULL;
    Py_buffer view;
    PyObject *holder;
    if (get_view(args[0], &view, &holder) < 0) return NULL;
    PyObject *result = NULL, *control = NULL, *payload = NULL;
    if (pos < 0 || pos > view.len) {
        PyErr_SetString(PyExc_ValueError, "decode_dist(): pos outside the buffer");
        goto done;
    }
    Py_ssize_t frame_end, used_end;
    int got = dist_packet(view.buf, view.len, pos, max_frame, args[3], args[4], args[5], args[6],
                          args[7], args[8], holder ? holder : args[0], &control, &payload,
                          &frame_end, &used_end);
    if (got == 1)
        result = Py_BuildValue("(OOnn)", control, payload, frame_end, used_end);
    else if (got >= 0)
        result = Py_NewRef(got == 0 ? Py_None : Py_False);
done:
    Py_XDECREF(control);
    Py_XDECREF(payload);
    PyBuffer_Release(&view);
    Py_XDECREF(holder);
    return result;
}

/* decode_dist_batch(buf, pos, max_frame, memo, control_mapping, mapping, limits, no_payload,
 * payload_tags, out, max_count): the packets of the usual form from buf[pos:] on, each
 * appended to the list `out` as (control, payload), up to max_count of them; it stops before
 * the first that is not all there or that the protocol must read itself. Returns (end, trailing):
 * where the packets taken end, and how many of them had bytes after their terms. A malformed
 * packet raises only when it is the first: one after others ends the batch before it, so that
 * the packets before it are applied first and it raises on the next call. A pipelined peer's
 * replies come many to a read; one call takes them all. */
static PyObject *cterm_decode_dist_batch(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 11) {
        PyErr_SetString(PyExc_TypeError, "decode_dist_batch() takes 11 arguments");
        return NULL;
    }
    Py_ssize_t pos, max_count = PyLong_AsSsize_t(args[10]);
    long long max_frame;
    if (max_count == -1 && PyErr_Occurred()) return NULL;
    if (dist_args("decode_dist_batch", args, &pos, &max_frame) < 0) return NULL;
    if (!PyList_CheckExact(args[9])) {
        PyErr_SetString(PyExc_TypeError, "decode_dist_batch() wants a list to append to");
        return NULL;
    }
    Py_buffer view;
    PyObject *holder;
    if (get_view(args[0], &view, &holder) < 0) return NULL;
    PyObject *result = NULL, *src = holder ? holder : args[0];
    if (pos < 0 || pos > view.len) {
        PyErr_SetString(PyExc_ValueError, "decode_dist_batch(): pos outside the buffer");
        goto done;
    }
    Py_ssize_t taken = 0, trailing = 0;
    while (taken < max_count) {
        PyObject *control, *payload;
        Py_ssize_t frame_end, used_end;
        int got = dist_packet(view.buf, view.len, pos, max_frame, args[3], args[4], args[5],
                              args[6], args[7], args[8], src, &control, &payload, &frame_end,
                              &used_end);
        if (got == -1) {
            /* raised again when the protocol reads this packet next; what is no Exception
             * (KeyboardInterrupt, SystemExit) is not the packet's doing and goes on up now */
            if (taken == 0 || !PyErr_ExceptionMatches(PyExc_Exception)) goto done;
            PyErr_Clear();
            break;
        }
        if (got != 1) break;
        PyObject *item = PyTuple_New(2);
        if (!item) { Py_DECREF(control); Py_DECREF(payload); goto done; }
        PyTuple_SET_ITEM(item, 0, control);
        PyTuple_SET_ITEM(item, 1, payload);
        int failed = PyList_Append(args[9], item);
        Py_DECREF(item);
        if (failed) goto done;
        trailing += used_end != frame_end;
        pos = frame_end;
        taken++;
    }
    result = Py_BuildValue("(nn)", pos, trailing);
done:
    PyBuffer_Release(&view);
    Py_XDECREF(holder);
    return result;
}

static void mark_compressed(void) {
    PyObject *type, *value, *tb;
    PyErr_Fetch(&type, &value, &tb);
    PyErr_NormalizeException(&type, &value, &tb);
    if (value && PyObject_IsInstance(value, DecodeErrorType) == 1)
        PyObject_SetAttr(value, s_compressed, Py_True);
    PyErr_Restore(type, value, tb);
}

static PyObject *cterm_decode(PyObject *self, PyObject *const *args, Py_ssize_t nargs,
                              PyObject *kwnames) {
    static const char *const names[] = {"data", "mapping", "limits", "atom_cache", "used"};
    PyObject *a[5] = {NULL, default_mapping, default_limits, Py_None, Py_False};
    if (parse_args("decode", args, nargs, kwnames, names, 5, 1, a) < 0) return NULL;
    int used = PyObject_IsTrue(a[4]);
    if (used < 0) return NULL;
    Py_buffer view;
    PyObject *holder, *term = NULL, *result = NULL, *inflated = NULL;
    if (get_view(a[0], &view, &holder) < 0) return NULL;
    const unsigned char *buf = view.buf;
    Py_ssize_t size = view.len, end;
    int temp = 0;
    Dec d = {0};
    {
        long max_depth;
        long long max_size;
        if (read_limits(a[2], &max_depth, &max_size, NULL, NULL) < 0) goto done;
        if ((long long)size > max_size) {
            derr(0, "input of %zd bytes is over max_size=%lld", size, max_size);
            goto done;
        }
    }
    if (size == 0) { derr(0, "empty input"); goto done; }
    if (buf[0] != T_VERSION) {
        derr(0, "not External Term Format: first byte is %d, not 131", buf[0]);
        goto done;
    }
    if (size > 1 && buf[1] == T_COMPRESSED) {
        /* zlib and its checks stay in Python: the inflate dominates, not the call. */
        PyObject *src = holder ? holder : a[0];
        PyObject *pair = PyObject_CallFunctionObjArgs(pure_inflate, src, a[2], NULL);
        if (!pair) goto done;
        if (!PyTuple_Check(pair) || PyTuple_GET_SIZE(pair) != 2) {
            Py_DECREF(pair);
            PyErr_SetString(PyExc_SystemError, "_inflate gave a bad result");
            goto done;
        }
        inflated = Py_NewRef(PyTuple_GET_ITEM(pair, 0));
        Py_ssize_t consumed = PyLong_AsSsize_t(PyTuple_GET_ITEM(pair, 1));
        Py_DECREF(pair);
        if (consumed == -1 && PyErr_Occurred()) goto done;
        if (!PyBytes_Check(inflated)) { PyErr_SetString(PyExc_SystemError, "_inflate gave no bytes"); goto done; }
        d.buf = (const unsigned char *)PyBytes_AS_STRING(inflated);
        d.len = PyBytes_GET_SIZE(inflated);
        d.src = inflated;
        term = run_decoder(&d, a[1], a[2], a[3], 0, &temp);
        if (!term) { mark_compressed(); goto done; }
        if (d.pos != d.len) {
            PyObject *reason = PyUnicode_FromString("trailing bytes inside the compressed term");
            PyObject *offset = PyLong_FromSsize_t(d.pos);
            PyObject *exc = NULL;
            if (reason && offset) {
                PyObject *cargs[3] = {reason, offset, Py_True};
                PyObject *kw = PyTuple_Pack(1, s_compressed);
                if (kw) exc = PyObject_Vectorcall(DecodeErrorType, cargs, 2, kw);
                Py_XDECREF(kw);
            }
            Py_XDECREF(reason);
            Py_XDECREF(offset);
            if (exc) set_exception_object(exc);
            Py_CLEAR(term);
            goto done;
        }
        end = consumed;
    } else {
        d.buf = buf;
        d.len = size;
        d.src = holder ? holder : a[0];
        term = run_decoder(&d, a[1], a[2], a[3], 1, &temp);
        if (!term) goto done;
        end = d.pos;
    }
    if (used) {
        PyObject *e = PyLong_FromSsize_t(end);
        if (e) {
            result = PyTuple_Pack(2, term, e);
            Py_DECREF(e);
        }
    } else if (end != size) {
        derr(end, "%zd trailing bytes after the term", size - end);
    } else {
        result = Py_NewRef(term);
    }
done:
    Py_XDECREF(term);
    Py_XDECREF(inflated);
    if (temp) mapstate_free(d.ms);
    PyBuffer_Release(&view);
    Py_XDECREF(holder);
    return result;
}

/* ------------------------------------------------------------------------------------------ */
/* Encoding                                                                                    */
/* ------------------------------------------------------------------------------------------ */

typedef struct {
    PyObject *out; /* a bytes object grown in place, so the result needs no final copy */
    Py_ssize_t len, cap;
    MapState *ms;
    int minor;
    int depth;
} Enc;

static int grow(Enc *e, Py_ssize_t n) {
    Py_ssize_t want = e->len + n;
    if (want < 0) { PyErr_NoMemory(); return -1; }
    Py_ssize_t cap = e->cap * 2;
    if (cap < want) cap = want + (want >> 3);
    if (_PyBytes_Resize(&e->out, cap) < 0) return -1;
    e->cap = cap;
    return 0;
}

static inline int reserve(Enc *e, Py_ssize_t n) {
    return e->cap - e->len >= n ? 0 : grow(e, n);
}
#define PTR(e) ((unsigned char *)PyBytes_AS_STRING((e)->out) + (e)->len)

static inline void put8(unsigned char *p, unsigned v) { p[0] = (unsigned char)v; }
static inline void put16(unsigned char *p, unsigned v) { p[0] = (unsigned char)(v >> 8); p[1] = (unsigned char)v; }
static inline void put32(unsigned char *p, uint32_t v) {
    p[0] = (unsigned char)(v >> 24); p[1] = (unsigned char)(v >> 16);
    p[2] = (unsigned char)(v >> 8); p[3] = (unsigned char)v;
}

static int write_bytes(Enc *e, const void *src, Py_ssize_t n) {
    if (reserve(e, n) < 0) return -1;
    memcpy(PTR(e), src, (size_t)n);
    e->len += n;
    return 0;
}

/* Raise EncodeError(reason, value); returns -1. */
static int eerr(PyObject *value, const char *fmt, ...) {
    va_list va;
    va_start(va, fmt);
    PyObject *reason = PyUnicode_FromFormatV(fmt, va);
    va_end(va);
    if (!reason) return -1;
    PyObject *args[2] = {reason, Py_NewRef(value ? value : Py_None)};
    PyObject *exc = make(EncodeErrorType, 2, args);
    if (exc) set_exception_object(exc);
    return -1;
}

/* If the pending error is an EncodeError, replace it with error.at(step). Steals step. */
static int add_step(PyObject *step) {
    if (!step) return -1;
    if (!PyErr_ExceptionMatches(EncodeErrorType)) { Py_DECREF(step); return -1; }
    PyObject *type, *value, *tb;
    PyErr_Fetch(&type, &value, &tb);
    PyErr_NormalizeException(&type, &value, &tb);
    PyObject *outer = value ? PyObject_CallMethodOneArg(value, s_at, step) : NULL;
    Py_DECREF(step);
    if (!outer) {
        Py_XDECREF(type); Py_XDECREF(value); Py_XDECREF(tb);
        return -1;
    }
    Py_XDECREF(type); Py_XDECREF(value); Py_XDECREF(tb);
    set_exception_object(outer);
    return -1;
}

static int enc(Enc *e, PyObject *obj);

static int write_atom(Enc *e, PyObject *name) {
    Py_ssize_t chars = PyUnicode_GET_LENGTH(name);
    if (chars > 255) return eerr(name, "an atom has at most 255 characters, not %zd", chars);
    if (e->minor < 2 && PyUnicode_KIND(name) == PyUnicode_1BYTE_KIND) {
        if (reserve(e, 3 + chars) < 0) return -1;
        unsigned char *p = PTR(e);
        p[0] = T_ATOM;
        put16(p + 1, (unsigned)chars);
        memcpy(p + 3, PyUnicode_1BYTE_DATA(name), (size_t)chars);
        e->len += 3 + chars;
        return 0;
    }
    Py_ssize_t n;
    PyObject *tmp = NULL;
    const char *raw;
    if (PyUnicode_IS_ASCII(name)) {
        raw = (const char *)PyUnicode_1BYTE_DATA(name);
        n = chars;
    } else {
        tmp = PyUnicode_AsUTF8String(name);
        if (!tmp) {
            if (!PyErr_ExceptionMatches(PyExc_UnicodeEncodeError)) return -1;
            PyErr_Clear();
            return eerr(name, "an atom name must be valid Unicode (no lone surrogates)");
        }
        raw = PyBytes_AS_STRING(tmp);
        n = PyBytes_GET_SIZE(tmp);
    }
    int rc = reserve(e, 3 + n);
    if (rc == 0) {
        unsigned char *p = PTR(e);
        if (n < 256) {
            p[0] = T_SMALL_ATOM_UTF8;
            p[1] = (unsigned char)n;
            memcpy(p + 2, raw, (size_t)n);
            e->len += 2 + n;
        } else {
            p[0] = T_ATOM_UTF8;
            put16(p + 1, (unsigned)n);
            memcpy(p + 3, raw, (size_t)n);
            e->len += 3 + n;
        }
    }
    Py_XDECREF(tmp);
    return rc;
}

static int write_binary(Enc *e, PyObject *value, const char *raw, Py_ssize_t n) {
    if ((uint64_t)n > 0xFFFFFFFFull) return eerr(value, "a binary has at most 2**32 - 1 bytes");
    if (reserve(e, 5 + n) < 0) return -1;
    unsigned char *p = PTR(e);
    p[0] = T_BINARY;
    put32(p + 1, (uint32_t)n);
    memcpy(p + 5, raw, (size_t)n);
    e->len += 5 + n;
    return 0;
}

static int write_int(Enc *e, PyObject *obj) {
    int overflow;
    long long v = PyLong_AsLongLongAndOverflow(obj, &overflow);
    if (v == -1 && PyErr_Occurred()) return -1;
    if (!overflow) {
        if (reserve(e, 11) < 0) return -1;
        unsigned char *p = PTR(e);
        if (v >= 0 && v < 256) {
            p[0] = T_SMALL_INTEGER;
            p[1] = (unsigned char)v;
            e->len += 2;
        } else if (v >= -0x80000000LL && v <= 0x7FFFFFFFLL) {
            p[0] = T_INTEGER;
            put32(p + 1, (uint32_t)(int32_t)v);
            e->len += 5;
        } else {
            uint64_t mag = v < 0 ? (uint64_t)0 - (uint64_t)v : (uint64_t)v;
            int n = 0;
            p[0] = T_SMALL_BIG;
            p[2] = v < 0;
            while (mag) { p[3 + n++] = (unsigned char)mag; mag >>= 8; }
            p[1] = (unsigned char)n;
            e->len += 3 + n;
        }
        return 0;
    }
    PyObject *encoded = PyObject_CallOneArg(pure_encode_big, obj);
    if (!encoded) return -1;
    int rc = write_bytes(e, PyBytes_AS_STRING(encoded), PyBytes_GET_SIZE(encoded));
    Py_DECREF(encoded);
    return rc;
}

static int write_float(Enc *e, PyObject *obj) {
    double v = PyFloat_AS_DOUBLE(obj);
    if (!isfinite(v)) return eerr(obj, "Erlang has no NaN or infinite floats");
    if (e->minor) {
        if (reserve(e, 9) < 0) return -1;
        unsigned char *p = PTR(e);
        uint64_t bits;
        memcpy(&bits, &v, sizeof bits);
        p[0] = T_NEW_FLOAT;
        put32(p + 1, (uint32_t)(bits >> 32));
        put32(p + 5, (uint32_t)bits);
        e->len += 9;
        return 0;
    }
    char *text = PyOS_double_to_string(v, 'e', 20, 0, NULL);
    if (!text) return -1;
    size_t n = strlen(text);
    int rc = reserve(e, 32 + (Py_ssize_t)n);
    if (rc == 0) {
        unsigned char *p = PTR(e);
        Py_ssize_t width = n > 31 ? (Py_ssize_t)n : 31;
        p[0] = T_FLOAT;
        memset(p + 1, 0, (size_t)width);
        memcpy(p + 1, text, n);
        e->len += 1 + width;
    }
    PyMem_Free(text);
    return rc;
}

static int write_str(Enc *e, PyObject *value) {
    MapState *ms = e->ms;
    if (ms->str_as == STR_BINARY) {
        if (PyUnicode_IS_ASCII(value))
            return write_binary(e, value, (const char *)PyUnicode_1BYTE_DATA(value),
                                PyUnicode_GET_LENGTH(value));
        PyObject *raw = PyUnicode_AsUTF8String(value);
        if (!raw) {
            if (!PyErr_ExceptionMatches(PyExc_UnicodeEncodeError)) return -1;
            PyErr_Clear();
            return eerr(value, "str is not valid Unicode (lone surrogate)");
        }
        int rc = write_binary(e, raw, PyBytes_AS_STRING(raw), PyBytes_GET_SIZE(raw));
        Py_DECREF(raw);
        return rc;
    }
    if (ms->str_as == STR_ATOM) return write_atom(e, value);
    if (ms->str_as == STR_CHARLIST) {
        Py_ssize_t n = PyUnicode_GET_LENGTH(value);
        if (n == 0) return write_bytes(e, "j", 1);
        if (PyUnicode_KIND(value) == PyUnicode_1BYTE_KIND && n <= 0xFFFF) {
            if (reserve(e, 3 + n) < 0) return -1;
            unsigned char *p = PTR(e);
            p[0] = T_STRING;
            put16(p + 1, (unsigned)n);
            memcpy(p + 3, PyUnicode_1BYTE_DATA(value), (size_t)n);
            e->len += 3 + n;
            return 0;
        }
        if ((uint64_t)n > 0xFFFFFFFFull) return eerr(value, "a list has at most 2**32 - 1 elements");
        if (reserve(e, 6 + 5 * n) < 0) return -1;
        unsigned char *p = PTR(e);
        int kind = PyUnicode_KIND(value);
        const void *data = PyUnicode_DATA(value);
        Py_ssize_t w = 0;
        p[w++] = T_LIST;
        put32(p + w, (uint32_t)n);
        w += 4;
        for (Py_ssize_t i = 0; i < n; i++) {
            Py_UCS4 c = PyUnicode_READ(kind, data, i);
            if (c < 256) {
                p[w++] = T_SMALL_INTEGER;
                p[w++] = (unsigned char)c;
            } else {
                p[w++] = T_INTEGER;
                put32(p + w, c);
                w += 4;
            }
        }
        p[w++] = T_NIL;
        e->len += w;
        return 0;
    }
    return eerr(value, "%U", str_hint);
}

/* Whether the list is one BEAM writes as STRING_EXT (0 < len <= 65535, all 0..255, no bools).
 * As in the pure codec: the first item must be an int (bools are refused below), and items that are ints by
 * __index__ (IntEnum, numpy) go through bytes(). */
static int list_is_string(PyObject *list, PyObject **packed) {
    Py_ssize_t n = PyList_GET_SIZE(list);
    int other = 0;
    *packed = NULL;
    if (n == 0 || !PyLong_Check(PyList_GET_ITEM(list, 0))) return 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *item = PyList_GET_ITEM(list, i);
        if (PyLong_CheckExact(item)) {
            int overflow;
            long v = PyLong_AsLongAndOverflow(item, &overflow);
            if (overflow || v < 0 || v > 255) return 0;
        } else if (PyBool_Check(item) || !PyIndex_Check(item)) {
            return 0;
        } else {
            other = 1;
        }
    }
    if (!other) return 1;
    PyObject *raw = PyObject_CallOneArg((PyObject *)&PyBytes_Type, list);
    if (!raw) {
        if (PyErr_ExceptionMatches(PyExc_TypeError) || PyErr_ExceptionMatches(PyExc_ValueError)) {
            PyErr_Clear();
            return 0;
        }
        return -1;
    }
    if (PyBytes_GET_SIZE(raw) != n) { Py_DECREF(raw); return 0; }
    *packed = raw;
    return 1;
}

static int enc_items(Enc *e, PyObject *const *items, Py_ssize_t n) {
    for (Py_ssize_t i = 0; i < n; i++) {
        if (enc(e, items[i]) < 0) return add_step(PyLong_FromSsize_t(i));
    }
    return 0;
}

static int enc_pairs_dict(Enc *e, PyObject *dict) {
    Py_ssize_t n = PyDict_GET_SIZE(dict), pos = 0, count = 0;
    PyObject *key, *value;
    if (reserve(e, 5) < 0) return -1;
    unsigned char *p = PTR(e);
    p[0] = T_MAP;
    put32(p + 1, (uint32_t)n);
    e->len += 5;
    while (PyDict_Next(dict, &pos, &key, &value)) {
        /* Hold them: encoding may run Python code that changes the dict. */
        Py_INCREF(key);
        Py_INCREF(value);
        int rc = enc(e, key);
        if (rc < 0) add_step(PyTuple_Pack(2, s_key, key));
        else if ((rc = enc(e, value)) < 0) add_step(PyTuple_Pack(2, s_value, key));
        Py_DECREF(key);
        Py_DECREF(value);
        if (rc < 0) return -1;
        count++;
    }
    if (count != n || PyDict_GET_SIZE(dict) != n) {
        PyErr_SetString(PyExc_RuntimeError, "dictionary changed size during iteration");
        return -1;
    }
    return 0;
}

static int enc_fun(Enc *e, PyObject *fun) {
    PyObject *f[8] = {NULL};
    PyObject *const names[8] = {s_module, s_old_index, s_old_uniq, s_pid, s_free_vars, s_arity,
                                s_uniq, s_index};
    int rc = -1;
    for (int i = 0; i < 8; i++)
        if (!(f[i] = PyObject_GetAttr(fun, names[i]))) goto done;
    PyObject *module = f[0], *old_index = f[1], *old_uniq = f[2], *pid = f[3], *free = f[4];
    if (!PyTuple_Check(free)) { PyErr_SetString(PyExc_TypeError, "Fun.free_vars must be a tuple"); goto done; }
    Py_ssize_t nfree = PyTuple_GET_SIZE(free);
    Py_ssize_t head = e->len;
    int old = f[5] == Py_None;
    if (old) { /* FUN_EXT: NumFree, Pid, Module, Index, Uniq, FreeVars */
        if (reserve(e, 5) < 0) goto done;
        PTR(e)[0] = T_FUN;
        put32(PTR(e) + 1, (uint32_t)nfree);
        e->len += 5;
        if (enc(e, pid) < 0) goto done;
    } else { /* NEW_FUN_EXT: Size (patched below), Arity, Uniq, Index, NumFree, Module, ... */
        long arity = PyLong_AsLong(f[5]);
        unsigned long index = PyLong_AsUnsignedLong(f[7]);
        if (PyErr_Occurred()) goto done;
        if (!PyBytes_Check(f[6]) || PyBytes_GET_SIZE(f[6]) != 16 || arity < 0 || arity > 255 ||
            index > 0xFFFFFFFFul) {
            PyErr_SetString(PyExc_ValueError, "Fun arity, uniq or index out of range");
            goto done;
        }
        if (reserve(e, 30) < 0) goto done;
        unsigned char *p = PTR(e);
        p[0] = T_NEW_FUN;
        p[5] = (unsigned char)arity;
        memcpy(p + 6, PyBytes_AS_STRING(f[6]), 16);
        put32(p + 22, (uint32_t)index);
        put32(p + 26, (uint32_t)nfree);
        e->len += 30;
    }
    if (!PyUnicode_Check(module)) { PyErr_SetString(PyExc_TypeError, "Fun.module must be an Atom"); goto done; }
    if (write_atom(e, module) < 0 || enc(e, old_index) < 0 || enc(e, old_uniq) < 0) goto done;
    if (!old && enc(e, pid) < 0) goto done;
    for (Py_ssize_t i = 0; i < nfree; i++) {
        if (enc(e, PyTuple_GET_ITEM(free, i)) < 0) {
            if (add_step(PyLong_FromSsize_t(i)) < 0 && PyErr_ExceptionMatches(EncodeErrorType))
                add_step(Py_NewRef(s_free_vars));
            goto done;
        }
    }
    if (!old) {
        Py_ssize_t size = e->len - head - 1;
        if ((uint64_t)size > 0xFFFFFFFFull) { PyErr_SetString(PyExc_OverflowError, "fun too large"); goto done; }
        put32((unsigned char *)PyBytes_AS_STRING(e->out) + head + 1, (uint32_t)size);
    }
    rc = 0;
done:
    for (int i = 0; i < 8; i++) Py_XDECREF(f[i]);
    return rc;
}

static int get_u32_attr(PyObject *obj, PyObject *name, uint32_t *out) {
    PyObject *v = PyObject_GetAttr(obj, name);
    if (!v) return -1;
    unsigned long x = PyLong_AsUnsignedLong(v);
    Py_DECREF(v);
    if (x == (unsigned long)-1 && PyErr_Occurred()) return -1;
    if (x > 0xFFFFFFFFul) { PyErr_SetString(PyExc_OverflowError, "value does not fit 32 bits"); return -1; }
    *out = (uint32_t)x;
    return 0;
}

static int write_node(Enc *e, PyObject *obj) {
    PyObject *node = PyObject_GetAttr(obj, s_node);
    if (!node) return -1;
    int rc = PyUnicode_Check(node) ? write_atom(e, node)
                                   : (PyErr_SetString(PyExc_TypeError, "node must be an Atom"), -1);
    Py_DECREF(node);
    return rc;
}

static int enc_convert(Enc *e, PyObject *type, PyObject *obj) {
    PyObject *plain = PyObject_CallOneArg(type, obj);
    if (!plain) return -1;
    int rc = enc(e, plain);
    Py_DECREF(plain);
    return rc;
}

static int enc_other(Enc *e, PyObject *obj) {
    PyTypeObject *t = Py_TYPE(obj);
    if (t == (PyTypeObject *)PidType) {
        uint32_t id, serial, creation;
        if (reserve(e, 1) < 0) return -1;
        PTR(e)[0] = T_NEW_PID;
        e->len++;
        if (write_node(e, obj) < 0 || get_u32_attr(obj, s_id, &id) < 0 ||
            get_u32_attr(obj, s_serial, &serial) < 0 || get_u32_attr(obj, s_creation, &creation) < 0 ||
            reserve(e, 12) < 0) return -1;
        unsigned char *p = PTR(e);
        put32(p, id); put32(p + 4, serial); put32(p + 8, creation);
        e->len += 12;
        return 0;
    }
    if (t == (PyTypeObject *)ReferenceType) {
        PyObject *ids = PyObject_GetAttr(obj, s_ids);
        if (!ids) return -1;
        if (!PyTuple_Check(ids) || PyTuple_GET_SIZE(ids) > 0xFFFF) {
            Py_DECREF(ids);
            PyErr_SetString(PyExc_TypeError, "Reference.ids must be a tuple");
            return -1;
        }
        Py_ssize_t n = PyTuple_GET_SIZE(ids);
        uint32_t creation;
        int rc = reserve(e, 3);
        if (rc == 0) {
            PTR(e)[0] = T_NEWER_REFERENCE;
            put16(PTR(e) + 1, (unsigned)n);
            e->len += 3;
            rc = write_node(e, obj);
        }
        if (rc == 0) rc = get_u32_attr(obj, s_creation, &creation);
        if (rc == 0) rc = reserve(e, 4 + 4 * n);
        if (rc == 0) {
            put32(PTR(e), creation);
            e->len += 4;
            for (Py_ssize_t i = 0; i < n; i++) {
                unsigned long w = PyLong_AsUnsignedLong(PyTuple_GET_ITEM(ids, i));
                if (w == (unsigned long)-1 && PyErr_Occurred()) { rc = -1; break; }
                if (w > 0xFFFFFFFFul) { PyErr_SetString(PyExc_OverflowError, "reference word too big"); rc = -1; break; }
                put32(PTR(e), (uint32_t)w);
                e->len += 4;
            }
        }
        Py_DECREF(ids);
        return rc;
    }
    if (t == (PyTypeObject *)PortType) {
        PyObject *idobj = PyObject_GetAttr(obj, s_id), *v4obj = NULL;
        if (!idobj) return -1;
        unsigned long long id = PyLong_AsUnsignedLongLong(idobj);
        Py_DECREF(idobj);
        if (id == (unsigned long long)-1 && PyErr_Occurred()) return -1;
        if (!(v4obj = PyObject_GetAttr(obj, s_v4))) return -1;
        int v4 = PyObject_IsTrue(v4obj);
        Py_DECREF(v4obj);
        if (v4 < 0) return -1;
        uint32_t creation;
        if (v4 || id > 0xFFFFFFFFull) {
            if (reserve(e, 1) < 0) return -1;
            PTR(e)[0] = T_V4_PORT;
            e->len++;
            if (write_node(e, obj) < 0 || get_u32_attr(obj, s_creation, &creation) < 0 ||
                reserve(e, 12) < 0) return -1;
            put32(PTR(e), (uint32_t)(id >> 32));
            put32(PTR(e) + 4, (uint32_t)id);
            put32(PTR(e) + 8, creation);
            e->len += 12;
        } else {
            if (reserve(e, 1) < 0) return -1;
            PTR(e)[0] = T_NEW_PORT;
            e->len++;
            if (write_node(e, obj) < 0 || get_u32_attr(obj, s_creation, &creation) < 0 ||
                reserve(e, 8) < 0) return -1;
            put32(PTR(e), (uint32_t)id);
            put32(PTR(e) + 4, creation);
            e->len += 8;
        }
        return 0;
    }
    if (t == (PyTypeObject *)BitStringType) {
        PyObject *data = PyObject_GetAttr(obj, s_data), *tail = NULL;
        if (!data) return -1;
        int rc = -1;
        long bits = -1;
        if ((tail = PyObject_GetAttr(obj, s_tail_bits))) bits = PyLong_AsLong(tail);
        if (tail && !PyErr_Occurred() && PyBytes_Check(data) && bits >= 0 && bits < 256 &&
            (uint64_t)PyBytes_GET_SIZE(data) <= 0xFFFFFFFFull) {
            Py_ssize_t n = PyBytes_GET_SIZE(data);
            if (reserve(e, 6 + n) == 0) {
                unsigned char *p = PTR(e);
                p[0] = T_BIT_BINARY;
                put32(p + 1, (uint32_t)n);
                p[5] = (unsigned char)bits;
                memcpy(p + 6, PyBytes_AS_STRING(data), (size_t)n);
                e->len += 6 + n;
                rc = 0;
            }
        } else if (!PyErr_Occurred()) {
            PyErr_SetString(PyExc_ValueError, "malformed BitString");
        }
        Py_DECREF(data);
        Py_XDECREF(tail);
        return rc;
    }
    if (t == (PyTypeObject *)ImproperListType) {
        PyObject *items = PyObject_GetAttr(obj, s_items), *tail = NULL;
        if (!items) return -1;
        int rc = -1;
        if (!PyTuple_Check(items)) {
            PyErr_SetString(PyExc_TypeError, "ImproperList.items must be a tuple");
        } else if (reserve(e, 5) == 0) {
            PTR(e)[0] = T_LIST;
            put32(PTR(e) + 1, (uint32_t)PyTuple_GET_SIZE(items));
            e->len += 5;
            if (enc_items(e, &PyTuple_GET_ITEM(items, 0), PyTuple_GET_SIZE(items)) == 0 &&
                (tail = PyObject_GetAttr(obj, s_tail))) {
                rc = enc(e, tail);
                if (rc < 0) add_step(Py_NewRef(s_tail));
            }
        }
        Py_DECREF(items);
        Py_XDECREF(tail);
        return rc;
    }
    if (t == (PyTypeObject *)MapType) {
        PyObject *pairs = PyObject_CallMethod(obj, "items", NULL);
        if (!pairs) return -1;
        PyObject *seq = PySequence_Fast(pairs, "Map.items() must give a sequence");
        Py_DECREF(pairs);
        if (!seq) return -1;
        Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
        int rc = reserve(e, 5);
        if (rc == 0) {
            PTR(e)[0] = T_MAP;
            put32(PTR(e) + 1, (uint32_t)n);
            e->len += 5;
            for (Py_ssize_t i = 0; i < n && rc == 0; i++) {
                PyObject *pair = PySequence_Fast_GET_ITEM(seq, i);
                if (!PyTuple_Check(pair) || PyTuple_GET_SIZE(pair) != 2) {
                    PyErr_SetString(PyExc_TypeError, "Map pairs must be 2-tuples");
                    rc = -1;
                    break;
                }
                PyObject *key = PyTuple_GET_ITEM(pair, 0), *value = PyTuple_GET_ITEM(pair, 1);
                if ((rc = enc(e, key)) < 0) add_step(PyTuple_Pack(2, s_key, key));
                else if ((rc = enc(e, value)) < 0) add_step(PyTuple_Pack(2, s_value, key));
            }
        }
        Py_DECREF(seq);
        return rc;
    }
    if (t == (PyTypeObject *)ExportFunType) {
        PyObject *m = PyObject_GetAttr(obj, s_module), *f = m ? PyObject_GetAttr(obj, s_function) : NULL;
        uint32_t arity = 0;
        int rc = -1;
        if (f && get_u32_attr(obj, s_arity, &arity) == 0 && reserve(e, 1) == 0) {
            if (arity > 255 || !PyUnicode_Check(m) || !PyUnicode_Check(f)) {
                PyErr_SetString(PyExc_ValueError, "malformed ExportFun");
            } else {
                PTR(e)[0] = T_EXPORT;
                e->len++;
                if (write_atom(e, m) == 0 && write_atom(e, f) == 0 && reserve(e, 2) == 0) {
                    PTR(e)[0] = T_SMALL_INTEGER;
                    PTR(e)[1] = (unsigned char)arity;
                    e->len += 2;
                    rc = 0;
                }
            }
        }
        Py_XDECREF(m);
        Py_XDECREF(f);
        return rc;
    }
    if (t == (PyTypeObject *)FunType) return enc_fun(e, obj);
    if (t == (PyTypeObject *)LocalTermType) {
        PyObject *raw = PyObject_GetAttr(obj, s_raw);
        if (!raw) return -1;
        int rc = PyBytes_Check(raw) ? write_bytes(e, PyBytes_AS_STRING(raw), PyBytes_GET_SIZE(raw))
                                    : (PyErr_SetString(PyExc_TypeError, "LocalTerm.raw must be bytes"), -1);
        Py_DECREF(raw);
        return rc;
    }
    /* Subclasses encode as their base (bool cannot be subclassed, so it is never here). */
    if (PyObject_TypeCheck(obj, (PyTypeObject *)AtomType)) return write_atom(e, obj);
    if (PyLong_Check(obj)) return enc_convert(e, (PyObject *)&PyLong_Type, obj);
    if (PyFloat_Check(obj)) return enc_convert(e, (PyObject *)&PyFloat_Type, obj);
    if (PyUnicode_Check(obj)) {
        PyObject *plain = PyObject_Str(obj);
        if (!plain) return -1;
        if (!PyUnicode_CheckExact(plain)) {
            Py_SETREF(plain, PyUnicode_FromObject(plain));
            if (!plain) return -1;
        }
        int rc = write_str(e, plain);
        Py_DECREF(plain);
        return rc;
    }
    if (PyBytes_Check(obj) || (e->ms->bytes_like && (PyByteArray_Check(obj) || PyMemoryView_Check(obj)))) {
        Py_buffer view;
        if (PyObject_GetBuffer(obj, &view, PyBUF_SIMPLE) == 0) {
            int rc = write_binary(e, obj, view.buf, view.len);
            PyBuffer_Release(&view);
            return rc;
        }
        PyErr_Clear();
        PyObject *raw = PyObject_CallOneArg((PyObject *)&PyBytes_Type, obj);
        if (!raw) return -1;
        int rc = write_binary(e, raw, PyBytes_AS_STRING(raw), PyBytes_GET_SIZE(raw));
        Py_DECREF(raw);
        return rc;
    }
    if (PyTuple_Check(obj)) return enc_convert(e, (PyObject *)&PyTuple_Type, obj);
    if (PyList_Check(obj)) return enc_convert(e, (PyObject *)&PyList_Type, obj);
    if (PyDict_Check(obj)) return enc_convert(e, (PyObject *)&PyDict_Type, obj);
    PyObject *name = PyType_GetName(t);
    if (!name) return -1;
    int bufferish = PyByteArray_Check(obj) || PyMemoryView_Check(obj);
    eerr(obj, "%U has no Erlang form%s", name,
         bufferish ? " (pass bytes, or use a mapping with bytes_like=True)" : "");
    Py_DECREF(name);
    return -1;
}

static int enc_container(Enc *e, PyObject *obj);

static int enc(Enc *e, PyObject *obj) {
    PyTypeObject *t = Py_TYPE(obj);
    if (t == &PyLong_Type) return write_int(e, obj);
    if (t == (PyTypeObject *)AtomType) return write_atom(e, obj);
    if (t == &PyBytes_Type) return write_binary(e, obj, PyBytes_AS_STRING(obj), PyBytes_GET_SIZE(obj));
    if (t == &PyFloat_Type) return write_float(e, obj);
    if (t == &PyTuple_Type || t == &PyList_Type || t == &PyDict_Type) return enc_container(e, obj);
    if (t == &PyBool_Type) {
        PyObject *name = obj == Py_True ? s_true : s_false;
        return write_atom(e, name);
    }
    if (obj == Py_None) {
        if (!e->ms->none_atom) return eerr(obj, "None has no Erlang form: this mapping has no none_atom");
        return write_atom(e, e->ms->none_atom);
    }
    if (t == &PyUnicode_Type) return write_str(e, obj);
    if (++e->depth > HARD_DEPTH) goto too_deep;
    int rc = enc_other(e, obj);
    e->depth--;
    return rc;
too_deep:
    e->depth--;
    PyErr_SetString(PyExc_RecursionError, "term nested too deeply");
    return -1;
}

static int enc_container(Enc *e, PyObject *obj) {
    PyTypeObject *t = Py_TYPE(obj);
    int rc = 0;
    if (++e->depth > HARD_DEPTH) {
        e->depth--;
        PyErr_SetString(PyExc_RecursionError, "term nested too deeply");
        return -1;
    }
    if (t == &PyTuple_Type) {
        Py_ssize_t n = PyTuple_GET_SIZE(obj);
        if (reserve(e, 5) < 0) { rc = -1; goto out; }
        unsigned char *p = PTR(e);
        if (n < 256) {
            p[0] = T_SMALL_TUPLE;
            p[1] = (unsigned char)n;
            e->len += 2;
        } else {
            p[0] = T_LARGE_TUPLE;
            put32(p + 1, (uint32_t)n);
            e->len += 5;
        }
        rc = enc_items(e, &PyTuple_GET_ITEM(obj, 0), n);
    } else if (t == &PyList_Type) {
        Py_ssize_t n = PyList_GET_SIZE(obj);
        if (n == 0) { rc = write_bytes(e, "j", 1); goto out; }
        if (n <= 0xFFFF) {
            PyObject *packed;
            int s = list_is_string(obj, &packed);
            if (s < 0) { rc = -1; goto out; }
            if (s) {
                if (reserve(e, 3 + n) < 0) { Py_XDECREF(packed); rc = -1; goto out; }
                unsigned char *p = PTR(e);
                p[0] = T_STRING;
                put16(p + 1, (unsigned)n);
                if (packed) {
                    memcpy(p + 3, PyBytes_AS_STRING(packed), (size_t)n);
                    Py_DECREF(packed);
                } else {
                    for (Py_ssize_t i = 0; i < n; i++)
                        p[3 + i] = (unsigned char)PyLong_AsLong(PyList_GET_ITEM(obj, i));
                }
                e->len += 3 + n;
                goto out;
            }
        }
        if ((uint64_t)n > 0xFFFFFFFFull) { rc = eerr(obj, "a list has at most 2**32 - 1 elements"); goto out; }
        if (reserve(e, 5) < 0) { rc = -1; goto out; }
        PTR(e)[0] = T_LIST;
        put32(PTR(e) + 1, (uint32_t)n);
        e->len += 5;
        /* The list may change under us if encoding runs Python code: index it afresh each time. */
        for (Py_ssize_t i = 0; i < PyList_GET_SIZE(obj) && i < n; i++) {
            PyObject *item = PyList_GET_ITEM(obj, i);
            Py_INCREF(item);
            rc = enc(e, item);
            Py_DECREF(item);
            if (rc < 0) { add_step(PyLong_FromSsize_t(i)); goto out; }
        }
        if (PyList_GET_SIZE(obj) != n) {
            PyErr_SetString(PyExc_RuntimeError, "list changed size during encoding");
            rc = -1;
            goto out;
        }
        rc = write_bytes(e, "j", 1);
    } else {
        rc = enc_pairs_dict(e, obj);
    }
out:
    e->depth--;
    return rc;
}

static int parse_encode_common(PyObject *minor_obj, PyObject *mapping, Enc *e, int *temp) {
    long minor = PyLong_AsLong(minor_obj);
    if (minor == -1 && PyErr_Occurred()) return -1;
    if (minor < 0 || minor > 2) {
        PyErr_Format(PyExc_ValueError, "minor_version must be 0, 1 or 2, not %ld", minor);
        return -1;
    }
    e->minor = (int)minor;
    e->ms = mapstate_get(mapping, temp);
    return e->ms ? 0 : -1;
}

static PyObject *run_encoder(Enc *e, PyObject *term, int version_byte) {
    e->cap = 64;
    e->out = PyBytes_FromStringAndSize(NULL, e->cap);
    if (!e->out) return NULL;
    if (version_byte) {
        PyBytes_AS_STRING(e->out)[0] = (char)T_VERSION;
        e->len = 1;
    }
    if (enc(e, term) < 0) {
        Py_CLEAR(e->out);
        if (PyErr_ExceptionMatches(PyExc_RecursionError)) {
            PyErr_Clear();
            eerr(Py_None, "the term is nested too deeply (or contains itself)");
        }
        return NULL;
    }
    if (e->len != e->cap && _PyBytes_Resize(&e->out, e->len) < 0) return NULL;
    return e->out;
}

static PyObject *cterm_encode_body(PyObject *self, PyObject *const *args, Py_ssize_t nargs,
                                   PyObject *kwnames) {
    static const char *const names[] = {"term", "minor_version", "mapping"};
    static PyObject *two;
    if (!two) two = PyLong_FromLong(2);
    PyObject *a[3] = {NULL, two, default_mapping};
    if (parse_args("encode_body", args, nargs, kwnames, names, 3, 1, a) < 0) return NULL;
    Enc e = {0};
    int temp = 0;
    if (parse_encode_common(a[1], a[2], &e, &temp) < 0) return NULL;
    PyObject *result = run_encoder(&e, a[0], 0);
    if (temp) mapstate_free(e.ms);
    return result;
}

static PyObject *cterm_encode(PyObject *self, PyObject *const *args, Py_ssize_t nargs,
                              PyObject *kwnames) {
    static const char *const names[] = {"term", "compressed", "minor_version", "mapping"};
    static PyObject *two;
    if (!two) two = PyLong_FromLong(2);
    PyObject *a[4] = {NULL, Py_False, two, default_mapping};
    if (parse_args("encode", args, nargs, kwnames, names, 4, 1, a) < 0) return NULL;
    Enc e = {0};
    int temp = 0;
    if (parse_encode_common(a[2], a[3], &e, &temp) < 0) return NULL;
    PyObject *out = run_encoder(&e, a[0], 1);
    if (temp) mapstate_free(e.ms);
    if (!out || a[1] == Py_False) return out;
    long level = a[1] == Py_True ? 6 : PyLong_AsLong(a[1]);
    if (level == -1 && PyErr_Occurred()) { Py_DECREF(out); return NULL; }
    Py_ssize_t body_len = PyBytes_GET_SIZE(out) - 1;
    PyObject *view = PyMemoryView_FromMemory(PyBytes_AS_STRING(out) + 1, body_len, PyBUF_READ);
    PyObject *packed = view ? PyObject_CallFunction(zlib_compress, "Ol", view, level) : NULL;
    Py_XDECREF(view);
    if (!packed) { Py_DECREF(out); return NULL; }
    if (!PyBytes_Check(packed) || PyBytes_GET_SIZE(packed) + 4 >= body_len) { /* as BEAM: only when smaller */
        Py_DECREF(packed);
        return out;
    }
    Py_ssize_t n = PyBytes_GET_SIZE(packed);
    PyObject *result = PyBytes_FromStringAndSize(NULL, 6 + n);
    if (result) {
        unsigned char *p = (unsigned char *)PyBytes_AS_STRING(result);
        p[0] = T_VERSION;
        p[1] = T_COMPRESSED;
        put32(p + 2, (uint32_t)body_len);
        memcpy(p + 6, PyBytes_AS_STRING(packed), (size_t)n);
    }
    Py_DECREF(packed);
    Py_DECREF(out);
    return result;
}

/* encode_dist(control, control_mapping[, payload, mapping]): one distribution packet,
 * <<Length:32, 131, 68, 0, Control, Payload>> (a header with no atom cache references), built in
 * one buffer: the framing of every message a node sends, without three more calls and copies. */
static PyObject *cterm_encode_dist(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 2 && nargs != 4) {
        PyErr_SetString(PyExc_TypeError,
                        "encode_dist(control, control_mapping[, payload, mapping]) takes 2 or 4 arguments");
        return NULL;
    }
    Enc e = {0};
    int temp = 0;
    e.minor = 2;
    e.ms = mapstate_get(args[1], &temp);
    if (!e.ms) return NULL;
    PyObject *result = NULL;
    e.cap = 128;
    e.out = PyBytes_FromStringAndSize(NULL, e.cap);
    if (!e.out) goto done;
    e.len = 7;
    if (enc(&e, args[0]) < 0) goto failed;
    if (nargs == 4) {
        if (temp) mapstate_free(e.ms);
        e.ms = mapstate_get(args[3], &temp);
        if (!e.ms) goto failed;
        if (enc(&e, args[2]) < 0) goto failed;
    }
    if ((uint64_t)(e.len - 4) > 0xFFFFFFFFull) {
        eerr(Py_None, "a distribution packet holds at most 2**32 - 1 bytes");
        goto failed;
    }
    unsigned char *p = (unsigned char *)PyBytes_AS_STRING(e.out);
    put32(p, (uint32_t)(e.len - 4));
    p[4] = T_VERSION;
    p[5] = 'D';
    p[6] = 0;
    if (e.len != e.cap && _PyBytes_Resize(&e.out, e.len) < 0) goto done; /* e.out is NULL then */
    result = e.out;
    e.out = NULL;
    goto done;
failed:
    Py_CLEAR(e.out);
    if (PyErr_ExceptionMatches(PyExc_RecursionError)) {
        PyErr_Clear();
        eerr(Py_None, "the term is nested too deeply (or contains itself)");
    }
done:
    if (temp) mapstate_free(e.ms);
    return result;
}

/* ------------------------------------------------------------------------------------------ */
/* Module                                                                                      */
/* ------------------------------------------------------------------------------------------ */

static PyMethodDef methods[] = {
    {"encode", (PyCFunction)(void (*)(void))cterm_encode, METH_FASTCALL | METH_KEYWORDS,
     "encode(term, compressed=False, minor_version=2, mapping=Mapping.EXACT) -> bytes"},
    {"encode_body", (PyCFunction)(void (*)(void))cterm_encode_body, METH_FASTCALL | METH_KEYWORDS,
     "encode_body(term, minor_version=2, mapping=Mapping.EXACT) -> bytes"},
    {"encode_dist", (PyCFunction)(void (*)(void))cterm_encode_dist, METH_FASTCALL,
     "encode_dist(control, control_mapping[, payload, mapping]) -> one distribution packet"},
    {"decode_dist", (PyCFunction)(void (*)(void))cterm_decode_dist, METH_FASTCALL,
     "decode_dist(buf, pos, max_frame, memo, control_mapping, mapping, limits, no_payload, "
     "payload_tags) -> (control, payload, frame_end, used_end) | None | False"},
    {"decode_dist_batch", (PyCFunction)(void (*)(void))cterm_decode_dist_batch, METH_FASTCALL,
     "decode_dist_batch(buf, pos, max_frame, memo, control_mapping, mapping, limits, no_payload, "
     "payload_tags, out, max_count) -> (end, trailing)"},
    {"decode", (PyCFunction)(void (*)(void))cterm_decode, METH_FASTCALL | METH_KEYWORDS,
     "decode(data, mapping=Mapping.EXACT, limits=Limits(), atom_cache=None, used=False)"},
    {"decode_body", (PyCFunction)(void (*)(void))cterm_decode_body, METH_FASTCALL | METH_KEYWORDS,
     "decode_body(data, offset=0, mapping=Mapping.EXACT, limits=Limits(), atom_cache=None)"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef moduledef = {
    PyModuleDef_HEAD_INIT, "beambridge.term._cterm",
    "The compiled External Term Format codec (same API and semantics as _pure).", -1, methods,
};

static PyObject *from(const char *module, const char *name) {
    PyObject *m = PyImport_ImportModule(module);
    if (!m) return NULL;
    PyObject *v = PyObject_GetAttrString(m, name);
    Py_DECREF(m);
    return v;
}

#define INTERN(var, text) if (!(var = PyUnicode_InternFromString(text))) return NULL

PyMODINIT_FUNC PyInit__cterm(void) {
    INTERN(s_node, "node"); INTERN(s_id, "id"); INTERN(s_serial, "serial");
    INTERN(s_creation, "creation"); INTERN(s_ids, "ids"); INTERN(s_v4, "v4");
    INTERN(s_data, "data"); INTERN(s_tail_bits, "tail_bits"); INTERN(s_items, "items");
    INTERN(s_tail, "tail"); INTERN(s_module, "module"); INTERN(s_function, "function");
    INTERN(s_arity, "arity"); INTERN(s_old_index, "old_index"); INTERN(s_old_uniq, "old_uniq");
    INTERN(s_pid, "pid"); INTERN(s_free_vars, "free_vars"); INTERN(s_uniq, "uniq");
    INTERN(s_index, "index"); INTERN(s_raw, "raw"); INTERN(s_at, "at");
    INTERN(s_compressed, "compressed"); INTERN(s_max_depth, "max_depth");
    INTERN(s_max_size, "max_size");
    INTERN(s_max_terms, "max_terms");
    INTERN(s_max_memory, "max_memory");
    INTERN(s_binary_as, "binary_as"); INTERN(s_string_as, "string_as"); INTERN(s_atom_as, "atom_as");
    INTERN(s_bool_atoms, "bool_atoms"); INTERN(s_none_atom, "none_atom"); INTERN(s_str_as, "str_as");
    INTERN(s_bytes_like, "bytes_like"); INTERN(s_true, "true"); INTERN(s_false, "false");
    INTERN(s_key, "key"); INTERN(s_value, "value"); INTERN(s_str, "str");
    const char *types = "beambridge.term._types";
    if (!(AtomType = from(types, "Atom")) || !(PidType = from(types, "Pid")) ||
        !(ReferenceType = from(types, "Reference")) || !(PortType = from(types, "Port")) ||
        !(BitStringType = from(types, "BitString")) || !(ImproperListType = from(types, "ImproperList")) ||
        !(MapType = from(types, "Map")) || !(ExportFunType = from(types, "ExportFun")) ||
        !(FunType = from(types, "Fun")) || !(LocalTermType = from(types, "LocalTerm")))
        return NULL;
    static const char *const pid_fields[] = {"node", "id", "serial", "creation"};
    static const char *const ref_fields[] = {"node", "creation", "ids"};
    static const char *const port_fields[] = {"node", "id", "creation", "v4"};
    if (slotted_init(&pid_slots, PidType, 4, pid_fields) < 0 ||
        slotted_init(&ref_slots, ReferenceType, 3, ref_fields) < 0 ||
        slotted_init(&port_slots, PortType, 4, port_fields) < 0)
        return NULL;
    if (!(DecodeErrorType = from("beambridge._errors", "DecodeError")) ||
        !(EncodeErrorType = from("beambridge._errors", "EncodeError")))
        return NULL;
    const char *pure = "beambridge.term._pure";
    if (!(pure_inflate = from(pure, "_inflate")) || !(pure_local_decoder = from(pure, "_local_decoder")) ||
        !(pure_encode_big = from(pure, "_encode_big")) || !(default_limits = from(pure, "_LIMITS")) ||
        !(str_hint = from(pure, "_STR_HINT")))
        return NULL;
    PyObject *mapping_type = from("beambridge.term._options", "Mapping");
    if (!mapping_type) return NULL;
    default_mapping = PyObject_GetAttrString(mapping_type, "EXACT");
    Py_DECREF(mapping_type);
    if (!default_mapping) return NULL;
    if (!(zlib_compress = from("zlib", "compress")) || !(StructError = from("struct", "error")))
        return NULL;
    if (!(mapstates = PyDict_New())) return NULL;
    for (int i = 0; i < 256; i++)
        if (!(small_ints[i] = PyLong_FromLong(i))) return NULL;
    return PyModule_Create(&moduledef);
}
