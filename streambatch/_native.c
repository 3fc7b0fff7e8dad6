/* streambatch._native: the loader's byte loops, in C, with the GIL released.
 *
 * Each function does in one call what numpy would do in many (one call per chunk, per slice or
 * per document), so that the reader threads and the consuming thread run their byte work in
 * parallel instead of taking turns on the interpreter lock.  Arguments are checked here (bounds,
 * sizes) before any byte is touched; streambatch/_kernels.py holds the numpy equivalents used
 * where this module was not built, and the tests compare the two.
 *
 *   crc32c_addresses()  the addresses of this module's CRC-32C functions (signed as google-crc32c's
 *       crc32c_extend) that this CPU runs, the fastest first, 0 for one it cannot: the fn of the
 *       functions below (io/checksum.py picks it).
 *   crc_chunks(fn, data, chunk_bytes, out)   the checksum of each chunk_bytes of data in turn,
 *       computed by the C function at address fn (uint32 fn(uint32 crc, const void *p, size_t n):
 *       google-crc32c's crc32c_extend), written to out (uint32, one per chunk).
 *   crc_ranges(fn, data, starts, sizes, out)  the checksum (by fn, as crc_chunks) of sizes[i] bytes of
 *       data at starts[i], for each i (int64 arrays), into out (uint32, one per range).
 *   copy_ranges(src, src_at, sizes, dst, dst_at)  sizes[i] bytes from src at src_at[i] to dst at
 *       dst_at[i], for each i (int64 arrays; src and dst must not overlap; an empty range is skipped,
 *       wherever it points).
 *   copy_from(srcs, which, src_at, sizes, dst, dst_at)  as copy_ranges, range i taken from the buffer
 *       srcs[which[i]] (a sequence of buffers: memory-mapped files); returns -1, or the range at which
 *       a SIGBUS stopped it (a mapped file truncated since it was mapped: see bus_guard_ready).
 *   take_rows(srcs, row_nbytes, idx, bounds, dsts)  rows of the buffers srcs (row_nbytes[c] bytes a row of
 *       srcs[c]) gathered for several batches at once: batch b's rows idx[bounds[b]:bounds[b + 1]]
 *       of srcs[c] into dsts[b * len(srcs) + c], one after another (idx, bounds: int64).
 *   pread_ranges(fds, offsets, sizes, dst, dst_at[, fn, out, gap, scratch])  sizes[i] bytes at
 *       offsets[i] of descriptor fds[i] into dst at dst_at[i], for each i (int64 arrays), with
 *       pread; returns -1, or the first i that failed (an error or the file's end: the caller reads
 *       it again to say which).  With fn and out, each range's checksum by fn (as crc_chunks) is
 *       taken right after its read, while its bytes are in cache, into out (uint32, one per range;
 *       fn 0: no sums).  Ranges that follow each other in a file and in dst are read with one pread
 *       (up to RUN_BYTES); with gap and scratch (a writable buffer), ranges of a file in order at
 *       most gap bytes apart are read with one pread into scratch (as many as it holds) and copied
 *       from there.
 *   pread_known(pieces, cut, unit_rows, first, known, cols, fn, gap, scratch, done)  a read task of a
 *       window whose pieces' checksums are known (cut-row parts of units): each piece of whole parts
 *       with known sums read into every column's buffer as pread_ranges reads, each part summed as
 *       it arrives and compared with its sum; done marks the pieces read and matching (see below).
 *   read_checked(fn, fds, offsets, chunk_bytes, want, buf, src_at, sizes, out, dst_at)  chunk i,
 *       chunk_bytes bytes at offsets[i] of descriptor fds[i], into buf at i * chunk_bytes (chunks
 *       that follow each other in one file: one pread), its checksum by fn (as crc_chunks) checked
 *       against want[i]; then buf's ranges (src_at, sizes) into out at dst_at, as copy_ranges.
 *       Returns -1, or the first chunk that could not be read whole or whose checksum differs
 *       (nothing is copied then: the caller reads them again to say what is wrong).
 *   pack(values, item_bytes, starts, cum, rows, at, count, tok, pos, doc)  tokens [at, at + count)
 *       of a stream of documents into tok, each token's place in its document into pos and its
 *       document's row id into doc (int64).  Document j is values[starts[j]:starts[j] + cum[j + 1]
 *       - cum[j]] (in items) and its tokens are tokens [cum[j], cum[j + 1]) of the stream (cum:
 *       int64 from 0, one more than rows and starts): the documents may lie anywhere in values.
 *   SlotView(owner, offset, length, flag_at)  a writable buffer of length bytes at offset of owner's
 *       buffer; when the last reference to it goes, the byte at flag_at of owner's buffer is set to 0,
 *       here in C: no Python code runs as it dies (a Ctrl-C taken in a finaliser is dropped by
 *       CPython), and the slot it marks free is free at once (loader/handoff.py).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>
#include <errno.h>
#include <unistd.h>
#include <signal.h>
#include <setjmp.h>

typedef uint32_t (*crc_fn)(uint32_t, const void *, size_t);

/* SIGBUS while copying from memory-mapped files (copy_from) (a file truncated after it was mapped):
 * the thread's loop jumps out and the call returns where it stopped, where the kernel would otherwise
 * end the process.  The handler is installed at the first guarded call (again if someone replaced
 * it since: faulthandler); a SIGBUS outside a guarded loop goes to the handler it replaced, or
 * kills the process as before. */
static __thread sigjmp_buf *bus_jump = NULL;
static struct sigaction bus_previous;

static void on_bus(int sig, siginfo_t *info, void *ctx) {
    sigjmp_buf *jb = bus_jump;
    if (jb != NULL) {
        bus_jump = NULL;
        siglongjmp(*jb, 1);
    }
    if (bus_previous.sa_flags & SA_SIGINFO) {
        if (bus_previous.sa_sigaction != NULL) {
            bus_previous.sa_sigaction(sig, info, ctx);
            return;
        }
    } else if (bus_previous.sa_handler != SIG_DFL && bus_previous.sa_handler != SIG_IGN) {
        bus_previous.sa_handler(sig);
        return;
    }
    sigaction(SIGBUS, &bus_previous, NULL); /* the default: the faulting access runs again and ends the process */
}

/* Our handler in place (called with the GIL held: installs are serialised). */
static int bus_guard_ready(void) {
    struct sigaction now;
    if (sigaction(SIGBUS, NULL, &now) != 0)
        return 0;
    if ((now.sa_flags & SA_SIGINFO) && now.sa_sigaction == on_bus)
        return 1;
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = on_bus;
    sa.sa_flags = SA_SIGINFO | SA_NODEFER | SA_ONSTACK;
    sigemptyset(&sa.sa_mask);
    return sigaction(SIGBUS, &sa, &bus_previous) == 0;
}

static int int64_buffer(Py_buffer *b, Py_ssize_t count, const char *name) {
    if (b->len < count * 8 || ((uintptr_t)b->buf & 7) != 0) {
        PyErr_Format(PyExc_ValueError, "%s: an aligned int64 buffer of at least %zd items is needed, got %zd bytes",
                     name, count, b->len);
        return 0;
    }
    return 1;
}

/* The ranges (src_at, sizes, dst_at) all lie within src_len and dst_len bytes; an empty one may
 * point anywhere.  Else an IndexError naming the first that does not, and 0. */
static int ranges_ok(const int64_t *s, const int64_t *z, const int64_t *d, Py_ssize_t n, Py_ssize_t src_len,
                     Py_ssize_t dst_len, const char *name) {
    for (Py_ssize_t i = 0; i < n; i++) {
        if (z[i] != 0 && (s[i] < 0 || z[i] < 0 || d[i] < 0 || s[i] + z[i] > src_len || d[i] + z[i] > dst_len)) {
            PyErr_Format(PyExc_IndexError, "%s: range %zd (%lld bytes from %lld to %lld) outside %zd -> %zd bytes",
                         name, i, (long long)z[i], (long long)s[i], (long long)d[i], src_len, dst_len);
            return 0;
        }
    }
    return 1;
}

/* Copy the ranges (checked by ranges_ok); called with the GIL released. */
static void copy_all(const char *from, const int64_t *s, const int64_t *z, char *to, const int64_t *d, Py_ssize_t n) {
    for (Py_ssize_t i = 0; i < n; i++)
        if (z[i] > 0)
            memcpy(to + d[i], from + s[i], (size_t)z[i]);
}

/* Read size bytes at offset of fd into dst (pread, again after a short read or EINTR); the bytes
 * read, fewer at an error or the file's end.  Called with the GIL released. */
static int64_t pread_all(int fd, char *dst, int64_t size, int64_t offset) {
    int64_t got = 0;
    while (got < size) {
        ssize_t r = pread(fd, dst + got, (size_t)(size - got), (off_t)(offset + got));
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            break;
        got += r;
    }
    return got;
}

/* CRC-32C (the Castagnoli polynomial, as google-crc32c's crc32c_extend: uint32 fn(uint32 crc, const
 * void *p, size_t n), crc the value so far, 0 to start), with the x86-64 instructions the CPU has,
 * chosen at run time (crc32c_addresses).  Datasets are summed every time they are read, so this is
 * in every read's CPU cost: a 12 KiB row in cache is summed at about 16 GB/s with the crc32
 * instruction (three interleaved streams, as google-crc32c) and about 45 GB/s by folding 256 bytes
 * at a time with carry-less multiplies (VPCLMULQDQ on 512-bit registers).
 *
 * The crc32 path sums three blocks of the buffer at once (LONG_BYTES, then SHORT_BYTES each) and
 * joins the three sums by shifting the earlier ones past the later blocks' bytes (a table of the
 * linear map "append n zero bytes", 4 lookups).  The folding path keeps 16 lanes of 128 bits,
 * each multiplied forward by x^(8 * 256) modulo the polynomial at every step and the next bytes
 * added in; at the end the lanes are folded into one, whose 16 bytes the crc32 instruction sums.
 * In the bit-reflected order a carry-less product of two 64-bit halves comes out one bit short,
 * hence the constants x^(8d + 63) and x^(8d - 1) (for the lane's upper and lower halves of
 * degree) to move a lane d bytes forward. */
#if defined(__x86_64__) && ((defined(__clang__) && __clang_major__ >= 8) || (!defined(__clang__) && __GNUC__ >= 9))
#include <cpuid.h>
#include <immintrin.h>
#ifndef bit_AVX512VL
#define bit_AVX512VL (1u << 31)
#endif
#ifndef bit_VPCLMULQDQ
#define bit_VPCLMULQDQ (1u << 10)
#endif
#define CRC32C_X86 1
#define CRC32C_POLY 0x82f63b78u /* bit-reflected: bit 31 is x^0 */
#define LONG_BYTES 4096
#define SHORT_BYTES 256
#define FOLD_MIN 512 /* shorter buffers take the crc32 path */

static uint32_t shift_long[4][256], shift_short[4][256];
enum { FOLD_256, FOLD_192, FOLD_128, FOLD_64, FOLD_48, FOLD_32, FOLD_16, FOLDS };
static const uint64_t fold_bytes[FOLDS] = {256, 192, 128, 64, 48, 32, 16};
static uint64_t fold_k[FOLDS][2]; /* fold_k[i]: the constants moving a lane fold_bytes[i] bytes forward */

static uint32_t gf2_times(const uint32_t *mat, uint32_t vec) {
    uint32_t sum = 0;
    for (; vec; vec >>= 1, mat++)
        if (vec & 1)
            sum ^= *mat;
    return sum;
}

static void gf2_square(uint32_t *square, const uint32_t *mat) {
    for (int n = 0; n < 32; n++)
        square[n] = gf2_times(mat, mat[n]);
}

/* The table of the map appending len zero bytes (a power of two) to a CRC-32C state. */
static void zeros_table(uint32_t table[4][256], size_t len) {
    uint32_t even[32], odd[32]; /* operators for 2^k zero bits, squared in turn */
    odd[0] = CRC32C_POLY;       /* one zero bit */
    for (int n = 1; n < 32; n++)
        odd[n] = 1u << (n - 1);
    gf2_square(even, odd); /* two */
    gf2_square(odd, even); /* four */
    const uint32_t *op = odd;
    for (;;) {
        gf2_square(even, odd); /* 8, 32, ... bits: 1, 4, ... bytes */
        op = even;
        if ((len >>= 1) == 0)
            break;
        gf2_square(odd, even);
        op = odd;
        if ((len >>= 1) == 0)
            break;
    }
    for (uint32_t n = 0; n < 256; n++)
        for (int k = 0; k < 4; k++)
            table[k][n] = gf2_times(op, n << (8 * k));
}

static inline uint32_t crc_shift(uint32_t table[4][256], uint32_t crc) {
    return table[0][crc & 0xff] ^ table[1][(crc >> 8) & 0xff] ^ table[2][(crc >> 16) & 0xff] ^ table[3][crc >> 24];
}

/* x^n modulo the polynomial, bit-reflected */
static uint32_t x_pow(uint64_t n) {
    uint32_t r = 0x80000000u;
    while (n--)
        r = (r >> 1) ^ ((r & 1) ? CRC32C_POLY : 0);
    return r;
}

static void crc32c_init(void) {
    zeros_table(shift_long, LONG_BYTES);
    zeros_table(shift_short, SHORT_BYTES);
    for (int i = 0; i < FOLDS; i++) {
        fold_k[i][0] = (uint64_t)x_pow(8 * fold_bytes[i] + 63) << 32;
        fold_k[i][1] = (uint64_t)x_pow(8 * fold_bytes[i] - 1) << 32;
    }
}

/* Three streams of `block` bytes each at p, summed at once and joined: the state after them. */
#define CRC_TRIPLE(c0, p, block, table)                                                              \
    do {                                                                                             \
        uint64_t c1 = 0, c2 = 0, a, b, d;                                                            \
        const unsigned char *end = p + block;                                                        \
        do {                                                                                         \
            memcpy(&a, p, 8), memcpy(&b, p + block, 8), memcpy(&d, p + 2 * block, 8);                \
            c0 = _mm_crc32_u64(c0, a), c1 = _mm_crc32_u64(c1, b), c2 = _mm_crc32_u64(c2, d);         \
            p += 8;                                                                                  \
        } while (p < end);                                                                           \
        c0 = crc_shift(table, (uint32_t)c0) ^ c1;                                                    \
        c0 = crc_shift(table, (uint32_t)c0) ^ c2;                                                    \
        p += 2 * block;                                                                              \
    } while (0)

__attribute__((target("sse4.2"))) static uint32_t crc32c_sse42(uint32_t crc, const void *buf, size_t len) {
    const unsigned char *p = buf;
    uint64_t c0 = crc ^ 0xffffffffu, a;
    for (; len && ((uintptr_t)p & 7); len--)
        c0 = _mm_crc32_u8((uint32_t)c0, *p++);
    for (; len >= 3 * LONG_BYTES; len -= 3 * LONG_BYTES)
        CRC_TRIPLE(c0, p, LONG_BYTES, shift_long);
    for (; len >= 3 * SHORT_BYTES; len -= 3 * SHORT_BYTES)
        CRC_TRIPLE(c0, p, SHORT_BYTES, shift_short);
    for (; len >= 8; len -= 8, p += 8)
        memcpy(&a, p, 8), c0 = _mm_crc32_u64(c0, a);
    for (; len; len--)
        c0 = _mm_crc32_u8((uint32_t)c0, *p++);
    return (uint32_t)c0 ^ 0xffffffffu;
}

#define FOLD_TARGET __attribute__((target("avx512f,avx512vl,vpclmulqdq,pclmul,sse4.2")))

FOLD_TARGET static inline __m512i fold512(__m512i lanes, __m512i k) {
    return _mm512_xor_si512(_mm512_clmulepi64_epi128(lanes, k, 0x00), _mm512_clmulepi64_epi128(lanes, k, 0x11));
}

FOLD_TARGET static inline __m512i fold_k512(int i) { /* the constants in each lane */
    return _mm512_broadcast_i32x4(_mm_loadu_si128((const __m128i *)fold_k[i]));
}

FOLD_TARGET static inline __m128i fold128(__m128i lane, int i) {
    __m128i k = _mm_loadu_si128((const __m128i *)fold_k[i]);
    return _mm_xor_si128(_mm_clmulepi64_si128(lane, k, 0x00), _mm_clmulepi64_si128(lane, k, 0x11));
}

FOLD_TARGET static uint32_t crc32c_avx512(uint32_t crc, const void *buf, size_t len) {
    const unsigned char *p = buf;
    if (len < FOLD_MIN)
        return crc32c_sse42(crc, buf, len);
    /* the state so far enters as the first 32 bits of the message */
    __m512i a0 = _mm512_xor_si512(_mm512_loadu_si512(p), _mm512_set_epi32(0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
                                                                           0, (int)(crc ^ 0xffffffffu)));
    __m512i a1 = _mm512_loadu_si512(p + 64), a2 = _mm512_loadu_si512(p + 128), a3 = _mm512_loadu_si512(p + 192);
    __m512i k = fold_k512(FOLD_256);
    for (p += 256, len -= 256; len >= 256; p += 256, len -= 256) {
        a0 = _mm512_xor_si512(fold512(a0, k), _mm512_loadu_si512(p));
        a1 = _mm512_xor_si512(fold512(a1, k), _mm512_loadu_si512(p + 64));
        a2 = _mm512_xor_si512(fold512(a2, k), _mm512_loadu_si512(p + 128));
        a3 = _mm512_xor_si512(fold512(a3, k), _mm512_loadu_si512(p + 192));
    }
    /* the four registers into the last (moved 192, 128 and 64 bytes forward), its four lanes into its last */
    __m512i a = _mm512_xor_si512(_mm512_xor_si512(fold512(a0, fold_k512(FOLD_192)), fold512(a1, fold_k512(FOLD_128))),
                                 _mm512_xor_si512(fold512(a2, fold_k512(FOLD_64)), a3));
    __m128i x = _mm_xor_si128(_mm_xor_si128(fold128(_mm512_extracti32x4_epi32(a, 0), FOLD_48),
                                            fold128(_mm512_extracti32x4_epi32(a, 1), FOLD_32)),
                              _mm_xor_si128(fold128(_mm512_extracti32x4_epi32(a, 2), FOLD_16),
                                            _mm512_extracti32x4_epi32(a, 3)));
    /* the lane's 16 bytes summed from a zero state: the state after all bytes so far; the rest from there */
    uint64_t c = _mm_crc32_u64(0, (uint64_t)_mm_cvtsi128_si64(x));
    c = _mm_crc32_u64(c, (uint64_t)_mm_extract_epi64(x, 1));
    return crc32c_sse42((uint32_t)c ^ 0xffffffffu, p, len);
}

/* Whether the CPU (cpuid) and the operating system (xgetbv: the registers are saved) allow the folding path. */
static int cpu_folds(void) {
    unsigned a, b, c, d;
    if (!__get_cpuid(1, &a, &b, &c, &d) || !(c & bit_OSXSAVE) || !(c & bit_PCLMUL) || !(c & bit_SSE4_2))
        return 0;
    uint32_t lo, hi;
    __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    if ((lo & 0xe6) != 0xe6) /* SSE, AVX, opmask and both halves of the upper ZMM state */
        return 0;
    if (!__get_cpuid_count(7, 0, &a, &b, &c, &d))
        return 0;
    return (b & bit_AVX512F) && (b & bit_AVX512VL) && (c & bit_VPCLMULQDQ);
}

static int cpu_crc32(void) {
    unsigned a, b, c, d;
    return __get_cpuid(1, &a, &b, &c, &d) && (c & bit_SSE4_2);
}
#endif

/* crc32c_addresses(): the addresses of this module's CRC-32C functions (as crc32c_extend) that this
 * CPU runs, the fastest first: (folding, crc32 instruction), 0 for one it cannot run or that was not built. */
static PyObject *crc32c_addresses(PyObject *self, PyObject *unused) {
    (void)self, (void)unused;
    uintptr_t fold = 0, sse42 = 0;
#ifdef CRC32C_X86
    sse42 = cpu_crc32() ? (uintptr_t)crc32c_sse42 : 0;
    fold = sse42 && cpu_folds() ? (uintptr_t)crc32c_avx512 : 0;
#endif
    return Py_BuildValue("(KK)", (unsigned long long)fold, (unsigned long long)sse42);
}

static PyObject *crc_chunks(PyObject *self, PyObject *args) {
    unsigned long long address;
    Py_buffer data, out;
    Py_ssize_t chunk;
    if (!PyArg_ParseTuple(args, "Ky*nw*", &address, &data, &chunk, &out))
        return NULL;
    PyObject *result = NULL;
    Py_ssize_t n = data.len, count = chunk > 0 ? (n + chunk - 1) / chunk : 0;
    if (chunk <= 0 || address == 0) {
        PyErr_SetString(PyExc_ValueError, "crc_chunks: chunk_bytes must be > 0 and fn a function address");
    } else if (out.len < count * 4) {
        PyErr_Format(PyExc_ValueError, "crc_chunks: %zd chunks need %zd bytes of output, got %zd", count, count * 4,
                     out.len);
    } else {
        crc_fn fn = (crc_fn)(uintptr_t)address;
        const char *p = (const char *)data.buf;
        char *o = (char *)out.buf;
        Py_BEGIN_ALLOW_THREADS
        for (Py_ssize_t k = 0; k < count; k++) {
            Py_ssize_t a = k * chunk, len = n - a < chunk ? n - a : chunk;
            uint32_t v = fn(0, p + a, (size_t)len);
            memcpy(o + 4 * k, &v, 4);
        }
        Py_END_ALLOW_THREADS
        result = Py_NewRef(Py_None);
    }
    PyBuffer_Release(&data);
    PyBuffer_Release(&out);
    return result;
}

static PyObject *crc_ranges(PyObject *self, PyObject *args) {
    unsigned long long address;
    Py_buffer data, starts, sizes, out;
    if (!PyArg_ParseTuple(args, "Ky*y*y*w*", &address, &data, &starts, &sizes, &out))
        return NULL;
    PyObject *result = NULL;
    Py_ssize_t n = starts.len / 8;
    if (address == 0) {
        PyErr_SetString(PyExc_ValueError, "crc_ranges: fn must be a function address");
    } else if (int64_buffer(&starts, n, "crc_ranges: starts") && int64_buffer(&sizes, n, "crc_ranges: sizes")) {
        const int64_t *s = (const int64_t *)starts.buf, *z = (const int64_t *)sizes.buf;
        if (out.len < n * 4) {
            PyErr_Format(PyExc_ValueError, "crc_ranges: %zd ranges need %zd bytes of output, got %zd", n, n * 4,
                         out.len);
        } else if (ranges_ok(s, z, s, n, data.len, data.len, "crc_ranges")) {
            crc_fn fn = (crc_fn)(uintptr_t)address;
            const char *p = (const char *)data.buf;
            char *o = (char *)out.buf;
            Py_BEGIN_ALLOW_THREADS
            for (Py_ssize_t k = 0; k < n; k++) {
                uint32_t v = z[k] > 0 ? fn(0, p + s[k], (size_t)z[k]) : 0;
                memcpy(o + 4 * k, &v, 4);
            }
            Py_END_ALLOW_THREADS
            result = Py_NewRef(Py_None);
        }
    }
    PyBuffer_Release(&data);
    PyBuffer_Release(&starts);
    PyBuffer_Release(&sizes);
    PyBuffer_Release(&out);
    return result;
}

static PyObject *copy_ranges(PyObject *self, PyObject *args) {
    Py_buffer src, src_at, sizes, dst, dst_at;
    if (!PyArg_ParseTuple(args, "y*y*y*w*y*", &src, &src_at, &sizes, &dst, &dst_at))
        return NULL;
    PyObject *result = NULL;
    Py_ssize_t n = sizes.len / 8;
    if (sizes.len % 8 || src_at.len != sizes.len || dst_at.len != sizes.len) {
        PyErr_SetString(PyExc_ValueError, "copy_ranges: src_at, sizes and dst_at must be int64 of one length");
        goto done;
    }
    if (!int64_buffer(&src_at, n, "copy_ranges: src_at") || !int64_buffer(&sizes, n, "copy_ranges: sizes") ||
        !int64_buffer(&dst_at, n, "copy_ranges: dst_at"))
        goto done;
    const int64_t *s = (const int64_t *)src_at.buf, *z = (const int64_t *)sizes.buf, *d = (const int64_t *)dst_at.buf;
    if (!ranges_ok(s, z, d, n, src.len, dst.len, "copy_ranges"))
        goto done;
    Py_BEGIN_ALLOW_THREADS
    copy_all((const char *)src.buf, s, z, (char *)dst.buf, d, n);
    Py_END_ALLOW_THREADS
    result = Py_NewRef(Py_None);
done:
    PyBuffer_Release(&src);
    PyBuffer_Release(&src_at);
    PyBuffer_Release(&sizes);
    PyBuffer_Release(&dst);
    PyBuffer_Release(&dst_at);
    return result;
}

/* Buffers of a sequence, each as a Py_buffer (writable ones where flags ask); NULL and an error, else
 * an array of *count the caller releases with release_all. */
static Py_buffer *buffers_of(PyObject *seq, int flags, Py_ssize_t *count, const char *what) {
    PyObject *fast = PySequence_Fast(seq, what);
    if (fast == NULL)
        return NULL;
    Py_ssize_t k = PySequence_Fast_GET_SIZE(fast), got = 0;
    Py_buffer *bufs = PyMem_Calloc(k > 0 ? (size_t)k : 1, sizeof(Py_buffer));
    if (bufs == NULL) {
        PyErr_NoMemory();
    } else {
        for (; got < k; got++)
            if (PyObject_GetBuffer(PySequence_Fast_GET_ITEM(fast, got), &bufs[got], flags) < 0)
                break;
        if (got < k) {
            for (Py_ssize_t j = 0; j < got; j++)
                PyBuffer_Release(&bufs[j]);
            PyMem_Free(bufs);
            bufs = NULL;
        }
    }
    Py_DECREF(fast);
    *count = k;
    return bufs;
}

static void release_all(Py_buffer *bufs, Py_ssize_t k) {
    if (bufs == NULL)
        return;
    for (Py_ssize_t j = 0; j < k; j++)
        PyBuffer_Release(&bufs[j]);
    PyMem_Free(bufs);
}

static PyObject *copy_from(PyObject *self, PyObject *args) {
    PyObject *seq;
    Py_buffer which, src_at, sizes, dst, dst_at;
    if (!PyArg_ParseTuple(args, "Oy*y*y*w*y*", &seq, &which, &src_at, &sizes, &dst, &dst_at))
        return NULL;
    PyObject *result = NULL;
    Py_buffer *srcs = NULL;
    Py_ssize_t k = 0, n = sizes.len / 8;
    if (sizes.len % 8 || which.len != sizes.len || src_at.len != sizes.len || dst_at.len != sizes.len) {
        PyErr_SetString(PyExc_ValueError, "copy_from: which, src_at, sizes and dst_at must be int64 of one length");
        goto done;
    }
    if (!int64_buffer(&which, n, "copy_from: which") || !int64_buffer(&src_at, n, "copy_from: src_at") ||
        !int64_buffer(&sizes, n, "copy_from: sizes") || !int64_buffer(&dst_at, n, "copy_from: dst_at"))
        goto done;
    if ((srcs = buffers_of(seq, PyBUF_SIMPLE, &k, "copy_from: srcs must be a sequence of buffers")) == NULL)
        goto done;
    const int64_t *w = (const int64_t *)which.buf, *s = (const int64_t *)src_at.buf, *z = (const int64_t *)sizes.buf,
                  *d = (const int64_t *)dst_at.buf;
    for (Py_ssize_t i = 0; i < n; i++) {
        if (z[i] == 0)
            continue;
        if (w[i] < 0 || w[i] >= k) {
            PyErr_Format(PyExc_IndexError, "copy_from: range %zd names source %lld of %zd", i, (long long)w[i], k);
            goto done;
        }
        if (!ranges_ok(s + i, z + i, d + i, 1, srcs[w[i]].len, dst.len, "copy_from"))
            goto done;
    }
    if (!bus_guard_ready()) {
        PyErr_SetFromErrno(PyExc_OSError);
        goto done;
    }
    {
        char *to = (char *)dst.buf;
        volatile Py_ssize_t at = -1;
        Py_BEGIN_ALLOW_THREADS
        sigjmp_buf jb;
        if (sigsetjmp(jb, 0) == 0) {
            bus_jump = &jb;
            for (Py_ssize_t i = 0; i < n; i++) {
                at = i;
                if (z[i] > 0)
                    memcpy(to + d[i], (const char *)srcs[w[i]].buf + s[i], (size_t)z[i]);
            }
            at = -1;
        }
        bus_jump = NULL;
        Py_END_ALLOW_THREADS
        result = PyLong_FromSsize_t(at);
    }
done:
    release_all(srcs, k);
    PyBuffer_Release(&which);
    PyBuffer_Release(&src_at);
    PyBuffer_Release(&sizes);
    PyBuffer_Release(&dst);
    PyBuffer_Release(&dst_at);
    return result;
}

static PyObject *take_rows(PyObject *self, PyObject *args) {
    PyObject *src_seq, *dst_seq;
    Py_buffer row_nbytes, idx, bounds;
    if (!PyArg_ParseTuple(args, "Oy*y*y*O", &src_seq, &row_nbytes, &idx, &bounds, &dst_seq))
        return NULL;
    PyObject *result = NULL;
    Py_ssize_t k = 0, m = 0;
    Py_buffer *srcs = NULL, *dsts = NULL;
    Py_ssize_t n = idx.len / 8, nb = bounds.len / 8 - 1;
    if ((srcs = buffers_of(src_seq, PyBUF_SIMPLE, &k, "take_rows: srcs must be a sequence of buffers")) == NULL ||
        (dsts = buffers_of(dst_seq, PyBUF_WRITABLE, &m, "take_rows: dsts must be a sequence of buffers")) == NULL)
        goto done;
    if (idx.len % 8 || bounds.len % 8 || nb < 0 || row_nbytes.len != 8 * k || m != nb * k) {
        PyErr_Format(PyExc_ValueError, "take_rows: %zd sources need %zd row sizes and, for %zd batches, %zd "
                     "destinations; got %zd and %zd", k, k, nb, nb * k, row_nbytes.len / 8, m);
        goto done;
    }
    if (!int64_buffer(&row_nbytes, k, "take_rows: row_nbytes") || !int64_buffer(&idx, n, "take_rows: idx") ||
        !int64_buffer(&bounds, nb + 1, "take_rows: bounds"))
        goto done;
    const int64_t *rb = (const int64_t *)row_nbytes.buf, *ix = (const int64_t *)idx.buf,
                  *bd = (const int64_t *)bounds.buf;
    int64_t rows = INT64_MAX;  /* the rows every source holds */
    for (Py_ssize_t c = 0; c < k; c++) {
        if (rb[c] <= 0) {
            PyErr_Format(PyExc_ValueError, "take_rows: source %zd has rows of %lld bytes", c, (long long)rb[c]);
            goto done;
        }
        if (srcs[c].len / rb[c] < rows)
            rows = srcs[c].len / rb[c];
    }
    for (Py_ssize_t b = 0; b < nb; b++) {
        if (bd[b] < 0 || bd[b + 1] < bd[b] || bd[b + 1] > n) {
            PyErr_Format(PyExc_IndexError, "take_rows: batch %zd's rows [%lld, %lld) outside the %zd indices", b,
                         (long long)bd[b], (long long)bd[b + 1], n);
            goto done;
        }
        for (Py_ssize_t c = 0; c < k; c++)
            if (dsts[b * k + c].len < (bd[b + 1] - bd[b]) * rb[c]) {
                PyErr_Format(PyExc_IndexError, "take_rows: batch %zd, source %zd: %lld rows of %lld bytes do not fit "
                             "%zd bytes", b, c, (long long)(bd[b + 1] - bd[b]), (long long)rb[c], dsts[b * k + c].len);
                goto done;
            }
    }
    for (Py_ssize_t i = 0; i < n; i++)
        if (ix[i] < 0 || ix[i] >= rows) {
            PyErr_Format(PyExc_IndexError, "take_rows: index %zd is row %lld of %lld", i, (long long)ix[i],
                         (long long)rows);
            goto done;
        }
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t b = 0; b < nb; b++) {
        const int64_t *at = ix + bd[b];
        int64_t count = bd[b + 1] - bd[b];
        for (Py_ssize_t c = 0; c < k; c++) {
            const char *from = (const char *)srcs[c].buf;
            char *to = (char *)dsts[b * k + c].buf;
            int64_t size = rb[c];
            if (size == 8) {
                for (int64_t i = 0; i < count; i++)
                    memcpy(to + 8 * i, from + 8 * at[i], 8);
            } else if (size == 4) {
                for (int64_t i = 0; i < count; i++)
                    memcpy(to + 4 * i, from + 4 * at[i], 4);
            } else {  /* memmove: glibc's memcpy ran these rows 1.3x slower on the development machine */
                for (int64_t i = 0; i < count; i++)
                    memmove(to + size * i, from + size * at[i], (size_t)size);
            }
        }
    }
    Py_END_ALLOW_THREADS
    result = Py_NewRef(Py_None);
done:
    release_all(srcs, k);
    release_all(dsts, m);
    PyBuffer_Release(&row_nbytes);
    PyBuffer_Release(&idx);
    PyBuffer_Release(&bounds);
    return result;
}

#define RUN_BYTES ((int64_t)256 << 10)

/* Range k's checksum by fn into sums (uint32 a range; 0 for an empty one), its bytes just read or copied. */
static void sum_range(crc_fn fn, char *sums, Py_ssize_t k, const char *bytes, int64_t size) {
    uint32_t v = size > 0 ? fn(0, bytes, (size_t)size) : 0;
    memcpy(sums + 4 * k, &v, 4);
}

/* pread_ranges' reads (its arguments checked; called with the GIL released): ranges i of n, from
 * fds f at offsets o, sizes z, to `to` at d; summed by fn into sums (4 bytes a range) where sums is
 * not NULL; near ranges through span (span_len bytes) where gap allows.  -1, or the first range
 * not read whole. */
static Py_ssize_t read_ranges(const int64_t *f, const int64_t *o, const int64_t *z, const int64_t *d, Py_ssize_t n,
                              char *to, crc_fn fn, char *sums, int64_t gap, char *span, int64_t span_len) {
    Py_ssize_t failed = -1;
    for (Py_ssize_t i = 0, j; i < n && failed < 0; i = j) {
        /* ranges that follow each other in the file and in dst (the pieces of one range that
         * their sums cut) are one pread, of at most RUN_BYTES: still in cache when summed */
        int64_t total = z[i];
        for (j = i + 1; j < n && f[j] == f[i] && o[j] == o[i] + total && d[j] == d[i] + total
                        && total + z[j] <= RUN_BYTES; j++)
            total += z[j];
        /* more ranges of the file, in order, at most gap bytes apart, within the scratch: one
         * pread into it (a pread costs about what copying gap bytes does), each copied out */
        Py_ssize_t js = i + 1;
        int64_t end = o[i] + z[i];
        for (; js < n && f[js] == f[i] && o[js] >= end && o[js] - end <= gap && o[js] + z[js] - o[i] <= span_len;
             js++)
            end = o[js] + z[js];
        if (js > j) {
            int64_t got = pread_all((int)f[i], span, end - o[i], o[i]);
            Py_ssize_t k = i;
            for (; k < js && o[k] + z[k] - o[i] <= got; k++) {
                memcpy(to + d[k], span + (o[k] - o[i]), (size_t)z[k]);
                if (sums != NULL)  /* summed as copied, its bytes in cache */
                    sum_range(fn, sums, k, to + d[k], z[k]);
            }
            if (k < js)
                failed = k;  /* not read whole: the caller reads it again to say why */
            j = js;
            continue;
        }
        int64_t got = pread_all((int)f[i], to + d[i], total, o[i]);
        if (got < total) {  /* an error or the file's end: the caller reads it again to say which */
            Py_ssize_t k = i;
            for (int64_t whole = 0; k < j && whole + z[k] <= got; k++)
                whole += z[k];
            failed = k;
            j = k;  /* the ranges read whole before it are summed */
        }
        for (Py_ssize_t k = i; sums != NULL && k < j; k++)  /* summed while its bytes are in cache */
            sum_range(fn, sums, k, to + d[k], z[k]);
    }
    return failed;
}

static PyObject *pread_ranges(PyObject *self, PyObject *args) {
    Py_buffer fds, offsets, sizes, dst, dst_at, out = {0}, scratch = {0};
    unsigned long long address = 0;
    long long gap = 0;
    if (!PyArg_ParseTuple(args, "y*y*y*w*y*|Kw*Lw*", &fds, &offsets, &sizes, &dst, &dst_at, &address, &out, &gap,
                          &scratch))
        return NULL;
    PyObject *result = NULL;
    Py_ssize_t n = sizes.len / 8, failed = -1;
    if (sizes.len % 8 || fds.len != sizes.len || offsets.len != sizes.len || dst_at.len != sizes.len) {
        PyErr_SetString(PyExc_ValueError, "pread_ranges: fds, offsets, sizes and dst_at must be int64 of one length");
        goto done;
    }
    if (out.obj != NULL && out.len > 0 && address == 0) {
        PyErr_SetString(PyExc_ValueError, "pread_ranges: fn must be a function address");
        goto done;
    }
    if (out.obj != NULL && address != 0 && out.len < n * 4) {
        PyErr_SetString(PyExc_ValueError, "pread_ranges: fn must be a function address and out 4 bytes a range");
        goto done;
    }
    if (!int64_buffer(&fds, n, "pread_ranges: fds") || !int64_buffer(&offsets, n, "pread_ranges: offsets") ||
        !int64_buffer(&sizes, n, "pread_ranges: sizes") || !int64_buffer(&dst_at, n, "pread_ranges: dst_at"))
        goto done;
    const int64_t *f = (const int64_t *)fds.buf, *o = (const int64_t *)offsets.buf, *z = (const int64_t *)sizes.buf,
                  *d = (const int64_t *)dst_at.buf;
    for (Py_ssize_t i = 0; i < n; i++) {
        if (z[i] < 0 || o[i] < 0 || f[i] < 0 || (z[i] > 0 && (d[i] < 0 || d[i] + z[i] > dst.len))) {
            PyErr_Format(PyExc_IndexError, "pread_ranges: range %zd (%lld bytes at %lld of fd %lld, to %lld) is not "
                         "a range of a %zd-byte output", i, (long long)z[i], (long long)o[i], (long long)f[i],
                         (long long)d[i], dst.len);
            goto done;
        }
    }
    {
        char *to = (char *)dst.buf, *sums = address != 0 ? (char *)out.buf : NULL, *span = (char *)scratch.buf;
        crc_fn fn = (crc_fn)(uintptr_t)address;
        int64_t span_len = scratch.obj != NULL ? (int64_t)scratch.len : 0;
        Py_BEGIN_ALLOW_THREADS
        failed = read_ranges(f, o, z, d, n, to, fn, sums, gap, span, span_len);
        Py_END_ALLOW_THREADS
    }
    result = PyLong_FromSsize_t(failed);
done:
    PyBuffer_Release(&fds);
    PyBuffer_Release(&offsets);
    PyBuffer_Release(&sizes);
    PyBuffer_Release(&dst);
    PyBuffer_Release(&dst_at);
    if (out.obj != NULL)
        PyBuffer_Release(&out);
    if (scratch.obj != NULL)
        PyBuffer_Release(&scratch);
    return result;
}

/* pread_known: one column of a window's read task (pread_known's cols[i]). */
typedef struct {
    Py_buffer fd, off, dst, sums;
    long long rb;
} KnownCol;

/* pread_known(pieces, cut, unit_rows, first, known, cols, fn, gap, scratch, done): the pieces of a
 * read task whose every part's checksum is known, read and checked, all columns in one call.
 * pieces: int64 rows (unit, lo, hi, at); a part is cut rows of a unit (its last one shorter), the
 * parts of unit u numbered from first[u] (int64, one more than unit_rows), known[part] (bytes) says
 * whether its sums are known; cols: a sequence of (fds, offsets, row_bytes, dst, sums): each unit's
 * descriptor and first row's offset (int64), a row's bytes, the window buffer (rows at `at`) and
 * each part's CRC-32C (uint32).  A piece is taken when it is whole parts (lo a multiple of cut, hi
 * one too or the unit's end) whose sums are all known, within its unit and the buffers; its parts
 * are read as pread_ranges reads ranges (gap, scratch) and each summed by fn as it arrives.  done
 * (bytes, one a piece) says which pieces were read and matched their sums: from the first piece
 * whose read came short or whose sum differs (returned; -1 if none), none is, and the caller
 * reads them again by its careful path, which says what is wrong. */
static PyObject *pread_known(PyObject *self, PyObject *args) {
    (void)self;
    Py_buffer pieces, unit_rows, first, known, scratch, done;
    PyObject *cols_obj, *result = NULL, *fast = NULL;
    Py_ssize_t cut, ncols = 0, got = 0;
    unsigned long long address;
    long long gap;
    if (!PyArg_ParseTuple(args, "y*ny*y*y*OKLw*w*", &pieces, &cut, &unit_rows, &first, &known, &cols_obj, &address,
                          &gap, &scratch, &done))
        return NULL;
    KnownCol *cols = NULL;
    int64_t *work = NULL;
    Py_ssize_t n = pieces.len / 32, units = unit_rows.len / 8;
    if (pieces.len % 32 || unit_rows.len % 8 || cut <= 0 || address == 0 || done.len < n ||
        !int64_buffer(&pieces, 4 * n, "pread_known: pieces") || !int64_buffer(&unit_rows, units, "pread_known: unit_rows") ||
        !int64_buffer(&first, units + 1, "pread_known: first")) {
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_ValueError, "pread_known: pieces (int64, 4 a row), a cut > 0, fn and one done a piece");
        goto done;
    }
    const int64_t *P = (const int64_t *)pieces.buf, *rows_of = (const int64_t *)unit_rows.buf,
                  *first_of = (const int64_t *)first.buf;
    const int64_t parts = first_of[units];
    if (parts < 0 || known.len < parts) {
        PyErr_SetString(PyExc_ValueError, "pread_known: known must hold a byte a part");
        goto done;
    }
    if ((fast = PySequence_Fast(cols_obj, "pread_known: cols must be a sequence of tuples")) == NULL)
        goto done;
    ncols = PySequence_Fast_GET_SIZE(fast);
    if ((cols = PyMem_Calloc(ncols > 0 ? (size_t)ncols : 1, sizeof(KnownCol))) == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    for (; got < ncols; got++) {
        KnownCol *c = &cols[got];
        if (!PyArg_ParseTuple(PySequence_Fast_GET_ITEM(fast, got), "y*y*Lw*y*;pread_known: a column is (fds, "
                              "offsets, row_bytes, dst, sums)", &c->fd, &c->off, &c->rb, &c->dst, &c->sums))
            goto done;
        if (c->rb <= 0 || c->sums.len < 4 * parts || !int64_buffer(&c->fd, units, "pread_known: fds") ||
            !int64_buffer(&c->off, units, "pread_known: offsets")) {
            got++;  /* its buffers are held: released below */
            if (!PyErr_Occurred())
                PyErr_SetString(PyExc_ValueError, "pread_known: a row's bytes > 0 and a sum a part");
            goto done;
        }
    }
    /* the pieces taken, and their parts' number */
    const uint8_t *is_known = (const uint8_t *)known.buf;
    uint8_t *taken = (uint8_t *)done.buf;
    int64_t m = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        const int64_t u = P[4 * i], lo = P[4 * i + 1], hi = P[4 * i + 2], at = P[4 * i + 3];
        taken[i] = 0;
        if (u < 0 || u >= units || lo < 0 || lo >= hi || hi > rows_of[u] || at < 0 || lo % cut != 0 ||
            (hi % cut != 0 && hi != rows_of[u]))
            continue;
        const int64_t k0 = first_of[u] + lo / cut, count = (hi - lo + cut - 1) / cut;
        int ok = k0 >= 0 && k0 + count <= first_of[u + 1] && first_of[u + 1] <= parts;
        for (int64_t j = 0; ok && j < count; j++)
            ok = is_known[k0 + j] != 0;
        for (Py_ssize_t c = 0; ok && c < ncols; c++) {
            const int64_t fd = ((const int64_t *)cols[c].fd.buf)[u], off = ((const int64_t *)cols[c].off.buf)[u];
            ok = fd >= 0 && off >= 0 && (at + hi - lo) <= (int64_t)cols[c].dst.len / cols[c].rb;
        }
        if (ok) {
            taken[i] = 1;
            m += count;
        }
    }
    /* per part: file, offset, size, place, part number, piece; then its sum as read */
    if ((work = PyMem_Malloc((size_t)(m > 0 ? m : 1) * (6 * 8 + 4))) == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    Py_ssize_t limit = n;
    {
        int64_t *f = work, *o = work + m, *z = work + 2 * m, *d = work + 3 * m, *part = work + 4 * m, *piece = work + 5 * m;
        char *sums = (char *)(work + 6 * m), *span = (char *)scratch.buf;
        crc_fn fn = (crc_fn)(uintptr_t)address;
        Py_BEGIN_ALLOW_THREADS
        for (Py_ssize_t c = 0; c < ncols && limit > 0; c++) {
            const int64_t *fds = (const int64_t *)cols[c].fd.buf, *offs = (const int64_t *)cols[c].off.buf, rb = cols[c].rb;
            Py_ssize_t q = 0;
            for (Py_ssize_t i = 0; i < limit; i++) {
                if (!taken[i])
                    continue;
                const int64_t u = P[4 * i], lo = P[4 * i + 1], hi = P[4 * i + 2], at = P[4 * i + 3];
                for (int64_t row = lo, k = first_of[u] + lo / cut; row < hi; row += cut, k++, q++) {
                    const int64_t rows = hi - row < cut ? hi - row : cut;
                    f[q] = fds[u], o[q] = offs[u] + row * rb, z[q] = rows * rb, d[q] = (at + row - lo) * rb;
                    part[q] = k, piece[q] = i;
                }
            }
            Py_ssize_t bad = read_ranges(f, o, z, d, q, (char *)cols[c].dst.buf, fn, sums, gap, span,
                                         (int64_t)scratch.len);
            Py_ssize_t stop = bad >= 0 ? bad : q;
            const uint32_t *want = (const uint32_t *)cols[c].sums.buf;
            for (Py_ssize_t p = 0; p < stop; p++) {
                uint32_t have;
                memcpy(&have, sums + 4 * p, 4);
                if (have != want[part[p]]) {
                    stop = p;
                    break;
                }
            }
            if (stop < q)
                limit = (Py_ssize_t)piece[stop];
        }
        for (Py_ssize_t i = limit; i < n; i++)
            taken[i] = 0;
        Py_END_ALLOW_THREADS
    }
    result = PyLong_FromSsize_t(limit < n ? limit : -1);
done:
    for (Py_ssize_t c = 0; c < got; c++) {
        PyBuffer_Release(&cols[c].fd);
        PyBuffer_Release(&cols[c].off);
        PyBuffer_Release(&cols[c].dst);
        PyBuffer_Release(&cols[c].sums);
    }
    PyMem_Free(cols);
    PyMem_Free(work);
    Py_XDECREF(fast);
    PyBuffer_Release(&pieces);
    PyBuffer_Release(&unit_rows);
    PyBuffer_Release(&first);
    PyBuffer_Release(&known);
    PyBuffer_Release(&scratch);
    PyBuffer_Release(&done);
    return result;
}

static PyObject *read_checked(PyObject *self, PyObject *args) {
    unsigned long long address;
    Py_buffer fds, offsets, want, buf, src_at, sizes, out, dst_at;
    Py_ssize_t chunk;
    if (!PyArg_ParseTuple(args, "Ky*y*ny*w*y*y*w*y*", &address, &fds, &offsets, &chunk, &want, &buf, &src_at, &sizes,
                          &out, &dst_at))
        return NULL;
    PyObject *result = NULL;
    Py_ssize_t n = fds.len / 8, m = sizes.len / 8, failed = -1;
    if (address == 0 || chunk <= 0 || fds.len % 8 || offsets.len != fds.len || want.len != fds.len ||
        sizes.len % 8 || src_at.len != sizes.len || dst_at.len != sizes.len || buf.len < n * chunk) {
        PyErr_SetString(PyExc_ValueError, "read_checked: a checksum function, chunk_bytes > 0, fds, offsets and want "
                                          "int64 of one length, a buffer of their chunks, src_at, sizes and dst_at "
                                          "int64 of one length");
        goto done;
    }
    if (!int64_buffer(&fds, n, "read_checked: fds") || !int64_buffer(&offsets, n, "read_checked: offsets") ||
        !int64_buffer(&want, n, "read_checked: want") || !int64_buffer(&src_at, m, "read_checked: src_at") ||
        !int64_buffer(&sizes, m, "read_checked: sizes") || !int64_buffer(&dst_at, m, "read_checked: dst_at"))
        goto done;
    const int64_t *f = (const int64_t *)fds.buf, *o = (const int64_t *)offsets.buf, *w = (const int64_t *)want.buf,
                  *s = (const int64_t *)src_at.buf, *z = (const int64_t *)sizes.buf, *d = (const int64_t *)dst_at.buf;
    for (Py_ssize_t i = 0; i < n; i++) {
        if (f[i] < 0 || o[i] < 0) {
            PyErr_Format(PyExc_ValueError, "read_checked: chunk %zd: descriptor %lld, offset %lld", i, (long long)f[i],
                         (long long)o[i]);
            goto done;
        }
    }
    if (!ranges_ok(s, z, d, m, n * chunk, out.len, "read_checked"))
        goto done;
    {
        crc_fn fn = (crc_fn)(uintptr_t)address;
        char *b = (char *)buf.buf, *to = (char *)out.buf;
        Py_BEGIN_ALLOW_THREADS
        Py_ssize_t i = 0;
        while (i < n && failed < 0) {  /* chunks that follow each other in one file: one pread */
            Py_ssize_t j = i + 1;
            while (j < n && f[j] == f[i] && o[j] == o[j - 1] + chunk)
                j++;
            int64_t want_bytes = (int64_t)(j - i) * chunk, got = pread_all((int)f[i], b + i * chunk, want_bytes, o[i]);
            if (got < want_bytes) {
                failed = i + (Py_ssize_t)(got / chunk);
                break;
            }
            for (Py_ssize_t k = i; k < j; k++) {
                if ((int64_t)fn(0, b + k * chunk, (size_t)chunk) != w[k]) {
                    failed = k;
                    break;
                }
            }
            i = j;
        }
        if (failed < 0)
            copy_all(b, s, z, to, d, m);
        Py_END_ALLOW_THREADS
    }
    result = PyLong_FromSsize_t(failed);
done:
    PyBuffer_Release(&fds);
    PyBuffer_Release(&offsets);
    PyBuffer_Release(&want);
    PyBuffer_Release(&buf);
    PyBuffer_Release(&src_at);
    PyBuffer_Release(&sizes);
    PyBuffer_Release(&out);
    PyBuffer_Release(&dst_at);
    return result;
}

static PyObject *pack(PyObject *self, PyObject *args) {
    Py_buffer values, starts, cum, rows, tok, pos, doc;
    Py_ssize_t item, at, count;
    if (!PyArg_ParseTuple(args, "y*ny*y*y*nnw*w*w*", &values, &item, &starts, &cum, &rows, &at, &count, &tok, &pos,
                          &doc))
        return NULL;
    PyObject *result = NULL;
    Py_ssize_t docs = rows.len / 8, have = item > 0 ? values.len / item : 0;
    if (item <= 0 || rows.len % 8 || cum.len != rows.len + 8 || starts.len != rows.len) {
        PyErr_SetString(PyExc_ValueError, "pack: item_bytes must be > 0, starts and rows int64 of one length, cum "
                                          "one longer");
        goto done;
    }
    if (!int64_buffer(&starts, docs, "pack: starts") || !int64_buffer(&cum, docs + 1, "pack: cum") ||
        !int64_buffer(&rows, docs, "pack: rows") || !int64_buffer(&pos, count, "pack: pos") ||
        !int64_buffer(&doc, count, "pack: doc"))
        goto done;
    const int64_t *c = (const int64_t *)cum.buf, *r = (const int64_t *)rows.buf, *s = (const int64_t *)starts.buf;
    if (c[0] != 0 || at < 0 || count < 0 || at + count > c[docs] || count * item > tok.len) {
        PyErr_Format(PyExc_ValueError, "pack: tokens [%zd, %zd) of %lld, an output of %zd bytes", at, at + count,
                     (long long)c[docs], tok.len);
        goto done;
    }
    for (Py_ssize_t j = 0; j < docs; j++) {
        if (c[j + 1] < c[j] || s[j] < 0 || s[j] + (c[j + 1] - c[j]) > have) {
            PyErr_Format(PyExc_ValueError, "pack: document %zd ([%lld, +%lld) of %zd values) out of range", j,
                         (long long)s[j], (long long)(c[j + 1] - c[j]), have);
            goto done;
        }
    }
    if (count > 0) {
        Py_ssize_t lo = 0, hi = docs;  /* the document holding token at: c[lo] <= at < c[lo + 1] */
        while (hi - lo > 1) {
            Py_ssize_t mid = lo + (hi - lo) / 2;
            if (c[mid] <= at) lo = mid; else hi = mid;
        }
        const char *from = (const char *)values.buf;
        char *t = (char *)tok.buf;
        int64_t *p = (int64_t *)pos.buf, *d = (int64_t *)doc.buf;
        Py_BEGIN_ALLOW_THREADS
        Py_ssize_t o = 0, j = lo, here = at;
        while (o < count) {
            while (c[j + 1] <= here) j++;  /* past empty documents */
            Py_ssize_t end = c[j + 1] < at + count ? c[j + 1] : at + count, n = end - here;
            int64_t first = here - c[j], id = r[j];
            memcpy(t + o * item, from + (s[j] + first) * item, (size_t)(n * item));
            for (Py_ssize_t i = 0; i < n; i++) {
                p[o + i] = first + i;
                d[o + i] = id;
            }
            o += n;
            here = end;
        }
        Py_END_ALLOW_THREADS
    }
    result = Py_NewRef(Py_None);
done:
    PyBuffer_Release(&values);
    PyBuffer_Release(&starts);
    PyBuffer_Release(&cum);
    PyBuffer_Release(&rows);
    PyBuffer_Release(&tok);
    PyBuffer_Release(&pos);
    PyBuffer_Release(&doc);
    return result;
}

typedef struct {
    PyObject_HEAD
    Py_buffer owner;
    Py_ssize_t offset, length, flag_at;
    int armed; /* built whole: its death frees the slot */
} SlotView;

static PyObject *slotview_new(PyTypeObject *type, PyObject *args, PyObject *kwds) {
    PyObject *owner;
    Py_ssize_t offset, length, flag_at;
    if (kwds != NULL && PyDict_GET_SIZE(kwds) > 0) {
        PyErr_SetString(PyExc_TypeError, "SlotView takes no keyword arguments");
        return NULL;
    }
    if (!PyArg_ParseTuple(args, "Onnn", &owner, &offset, &length, &flag_at))
        return NULL;
    SlotView *self = (SlotView *)type->tp_alloc(type, 0);
    if (self == NULL)
        return NULL;
    if (PyObject_GetBuffer(owner, &self->owner, PyBUF_WRITABLE) < 0) {
        self->owner.obj = NULL;
        Py_DECREF(self);
        return NULL;
    }
    if (offset < 0 || length < 0 || offset > self->owner.len - length || flag_at < 0 || flag_at >= self->owner.len) {
        PyErr_Format(PyExc_IndexError, "SlotView: %zd bytes at %zd, flag at %zd: outside the owner's %zd bytes",
                     length, offset, flag_at, self->owner.len);
        Py_DECREF(self);
        return NULL;
    }
    self->offset = offset;
    self->length = length;
    self->flag_at = flag_at;
    self->armed = 1;
    return (PyObject *)self;
}

static void slotview_dealloc(SlotView *self) {
    if (self->owner.obj != NULL) {
        if (self->armed)
            __atomic_store_n((unsigned char *)self->owner.buf + self->flag_at, (unsigned char)0, __ATOMIC_RELEASE);
        PyBuffer_Release(&self->owner);
    }
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int slotview_getbuffer(SlotView *self, Py_buffer *view, int flags) {
    return PyBuffer_FillInfo(view, (PyObject *)self, (char *)self->owner.buf + self->offset, self->length, 0, flags);
}

static PyBufferProcs slotview_as_buffer = {(getbufferproc)slotview_getbuffer, NULL};

static PyTypeObject SlotViewType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "streambatch._native.SlotView",
    .tp_basicsize = sizeof(SlotView),
    .tp_dealloc = (destructor)slotview_dealloc,
    .tp_as_buffer = &slotview_as_buffer,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "SlotView(owner, offset, length, flag_at): bytes of owner; its death sets owner[flag_at] = 0",
    .tp_new = slotview_new,
};

static PyMethodDef methods[] = {
    {"crc32c_addresses", crc32c_addresses, METH_NOARGS, "crc32c_addresses(): (folding, crc32 instruction) CRC-32C "
                                                         "functions' addresses, 0 where this CPU lacks them"},
    {"crc_chunks", crc_chunks, METH_VARARGS, "crc_chunks(fn, data, chunk_bytes, out): each chunk's checksum"},
    {"crc_ranges", crc_ranges, METH_VARARGS, "crc_ranges(fn, data, starts, sizes, out): each range's checksum"},
    {"copy_ranges", copy_ranges, METH_VARARGS, "copy_ranges(src, src_at, sizes, dst, dst_at): byte ranges copied"},
    {"copy_from", copy_from, METH_VARARGS, "copy_from(srcs, which, src_at, sizes, dst, dst_at): byte ranges of several "
                                            "buffers copied; -1, or the range a SIGBUS stopped"},
    {"take_rows", take_rows, METH_VARARGS, "take_rows(srcs, row_nbytes, idx, bounds, dsts): rows of several buffers "
                                            "gathered into each batch's"},
    {"pread_ranges", pread_ranges, METH_VARARGS, "pread_ranges(fds, offsets, sizes, dst, dst_at[, fn, out, gap, "
                                                  "scratch]): -1, or the first range that could not be read whole"},
    {"pread_known", pread_known, METH_VARARGS, "pread_known(pieces, cut, unit_rows, first, known, cols, fn, gap, "
                                                "scratch, done): the pieces whose sums are known, read and checked"},
    {"read_checked", read_checked, METH_VARARGS, "read_checked(fn, fds, offsets, chunk_bytes, want, buf, src_at, sizes, "
                                                  "out, dst_at): -1, or the first chunk not read whole or not as summed"},
    {"pack", pack, METH_VARARGS, "pack(values, item_bytes, starts, cum, rows, at, count, tok, pos, doc): packed tokens"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_native", "streambatch's byte loops, GIL released.", -1,
                                    methods};

PyMODINIT_FUNC PyInit__native(void) {
    if (PyType_Ready(&SlotViewType) < 0)
        return NULL;
#ifdef CRC32C_X86
    crc32c_init();
#endif
    PyObject *m = PyModule_Create(&module);
    if (m == NULL)
        return NULL;
    if (PyModule_AddObjectRef(m, "SlotView", (PyObject *)&SlotViewType) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
