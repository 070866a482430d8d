// glibc's allocator statistics (<malloc.h> is not part of Swift's Glibc module), for the tools that report the
// heap a held connection costs.
#ifndef C_MALLOC_INFO_SHIM_H
#define C_MALLOC_INFO_SHIM_H
#include <malloc.h>
#include <stddef.h>

// Bytes handed out by malloc and not yet freed: every arena's in-use chunks plus the mmapped ones.
static inline size_t cmi_heap_in_use(void) {
    struct mallinfo2 info = mallinfo2();
    return info.uordblks + info.hblkhd;
}
#endif
