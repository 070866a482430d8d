// glibc's allocator statistics and arena limit (<malloc.h> is not part of Swift's Glibc module): for the tools that
// report the heap a held connection costs, and for the keying daemon's arena limit.
#ifndef C_MALLOC_INFO_SHIM_H
#define C_MALLOC_INFO_SHIM_H
#include <malloc.h>
#include <stddef.h>

// Bytes handed out by malloc and not yet freed: every arena's in-use chunks plus the mmapped ones.
static inline size_t cmi_heap_in_use(void) {
    struct mallinfo2 info = mallinfo2();
    return info.uordblks + info.hblkhd;
}

// At most `arenas` malloc arenas (M_ARENA_MAX); returns 1 on success.
static inline int cmi_limit_arenas(int arenas) { return mallopt(M_ARENA_MAX, arenas); }
#endif
