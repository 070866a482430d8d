// CThreadCredentials: the raw credential system calls of ONE thread, for the Impersonation module.
//
// glibc's setresuid/setresgid/setgroups/setuid/... wrappers implement POSIX process-wide credentials:
// they change the calling thread and then signal every other thread (SIGSETXID) to make the same
// change. The kernel itself keeps credentials per task (thread), so the raw system calls below change
// the CALLING THREAD ONLY. That is what per-thread impersonation needs, and why nothing here goes
// through the glibc wrappers. Swift cannot call the variadic syscall(2), hence these static inline
// functions.
//
// Conventions: every function returns 0 (or a non-negative result) on success and a NEGATIVE errno
// on failure, read immediately after the system call, so the caller never depends on errno surviving.
// IDs are 32-bit; on architectures whose legacy calls take 16-bit IDs, the *32 calls are used.
#ifndef CTHREADCREDENTIALS_SHIM_H
#define CTHREADCREDENTIALS_SHIM_H

#include <sys/types.h>
#include <sys/syscall.h>
#include <sys/prctl.h>
#include <unistd.h>
#include <errno.h>
#include <stdint.h>
#include <linux/capability.h>

#ifdef SYS_setresuid32
#define CTC_SYS_SETRESUID SYS_setresuid32
#define CTC_SYS_SETRESGID SYS_setresgid32
#define CTC_SYS_GETRESUID SYS_getresuid32
#define CTC_SYS_GETRESGID SYS_getresgid32
#define CTC_SYS_SETGROUPS SYS_setgroups32
#define CTC_SYS_GETGROUPS SYS_getgroups32
#define CTC_SYS_SETFSUID SYS_setfsuid32
#define CTC_SYS_SETFSGID SYS_setfsgid32
#else
#define CTC_SYS_SETRESUID SYS_setresuid
#define CTC_SYS_SETRESGID SYS_setresgid
#define CTC_SYS_GETRESUID SYS_getresuid
#define CTC_SYS_GETRESGID SYS_getresgid
#define CTC_SYS_SETGROUPS SYS_setgroups
#define CTC_SYS_GETGROUPS SYS_getgroups
#define CTC_SYS_SETFSUID SYS_setfsuid
#define CTC_SYS_SETFSGID SYS_setfsgid
#endif

#ifndef PR_CAP_AMBIENT
#define PR_CAP_AMBIENT 47
#define PR_CAP_AMBIENT_IS_SET 1
#define PR_CAP_AMBIENT_RAISE 2
#define PR_CAP_AMBIENT_LOWER 3
#define PR_CAP_AMBIENT_CLEAR_ALL 4
#endif

static inline int ctc_result(long rc) { return rc == -1 ? -errno : (int)rc; }

/// The kernel thread id of the calling thread.
static inline int ctc_gettid(void) { return (int)syscall(SYS_gettid); }

/// setresuid(2) for the calling thread only. (uid_t)-1 leaves that id unchanged.
static inline int ctc_setresuid(uid_t real, uid_t effective, uid_t saved) {
    return ctc_result(syscall(CTC_SYS_SETRESUID, real, effective, saved));
}
/// setresgid(2) for the calling thread only. (gid_t)-1 leaves that id unchanged.
static inline int ctc_setresgid(gid_t real, gid_t effective, gid_t saved) {
    return ctc_result(syscall(CTC_SYS_SETRESGID, real, effective, saved));
}
static inline int ctc_getresuid(uid_t *real, uid_t *effective, uid_t *saved) {
    return ctc_result(syscall(CTC_SYS_GETRESUID, real, effective, saved));
}
static inline int ctc_getresgid(gid_t *real, gid_t *effective, gid_t *saved) {
    return ctc_result(syscall(CTC_SYS_GETRESGID, real, effective, saved));
}
/// setgroups(2) for the calling thread only (needs CAP_SETGID).
static inline int ctc_setgroups(size_t count, const gid_t *groups) {
    return ctc_result(syscall(CTC_SYS_SETGROUPS, count, groups));
}
/// getgroups(2): with capacity 0 returns the count; otherwise fills at most capacity entries
/// (-EINVAL when the list does not fit).
static inline int ctc_getgroups(int capacity, gid_t *groups) {
    return ctc_result(syscall(CTC_SYS_GETGROUPS, capacity, groups));
}
/// setfsuid(2): always returns the PREVIOUS fsuid; (uid_t)-1 is never a valid id, so it only reads.
static inline uid_t ctc_setfsuid(uid_t fsuid) { return (uid_t)syscall(CTC_SYS_SETFSUID, fsuid); }
static inline gid_t ctc_setfsgid(gid_t fsgid) { return (gid_t)syscall(CTC_SYS_SETFSGID, fsgid); }

/// capget(2), version 3 (64 capability bits), for the calling thread (pid 0).
static inline int ctc_capget(uint64_t *effective, uint64_t *permitted, uint64_t *inheritable) {
    struct __user_cap_header_struct header = { _LINUX_CAPABILITY_VERSION_3, 0 };
    struct __user_cap_data_struct data[_LINUX_CAPABILITY_U32S_3] = { { 0, 0, 0 }, { 0, 0, 0 } };
    int rc = ctc_result(syscall(SYS_capget, &header, data));
    if (rc < 0) return rc;
    *effective = (uint64_t)data[0].effective | ((uint64_t)data[1].effective << 32);
    *permitted = (uint64_t)data[0].permitted | ((uint64_t)data[1].permitted << 32);
    *inheritable = (uint64_t)data[0].inheritable | ((uint64_t)data[1].inheritable << 32);
    return 0;
}
/// capset(2), version 3, for the calling thread (pid 0).
static inline int ctc_capset(uint64_t effective, uint64_t permitted, uint64_t inheritable) {
    struct __user_cap_header_struct header = { _LINUX_CAPABILITY_VERSION_3, 0 };
    struct __user_cap_data_struct data[_LINUX_CAPABILITY_U32S_3] = {
        { (uint32_t)effective, (uint32_t)permitted, (uint32_t)inheritable },
        { (uint32_t)(effective >> 32), (uint32_t)(permitted >> 32), (uint32_t)(inheritable >> 32) },
    };
    return ctc_result(syscall(SYS_capset, &header, data));
}

/// 1 if `cap` is in the calling thread's ambient set, 0 if not, negative errno (-EINVAL past the last cap).
static inline int ctc_ambient_is_set(int cap) {
    return ctc_result(syscall(SYS_prctl, PR_CAP_AMBIENT, PR_CAP_AMBIENT_IS_SET, (unsigned long)cap, 0UL, 0UL));
}
static inline int ctc_ambient_raise(int cap) {
    return ctc_result(syscall(SYS_prctl, PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE, (unsigned long)cap, 0UL, 0UL));
}
static inline int ctc_ambient_clear_all(void) {
    return ctc_result(syscall(SYS_prctl, PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0UL, 0UL, 0UL));
}
/// The calling thread's securebits (PR_GET_SECUREBITS), or a negative errno.
static inline int ctc_securebits(void) {
    return ctc_result(syscall(SYS_prctl, PR_GET_SECUREBITS, 0UL, 0UL, 0UL, 0UL));
}
/// PR_GET_PDEATHSIG / PR_SET_PDEATHSIG: per thread; the kernel clears it whenever the thread's credentials change.
static inline int ctc_pdeathsig(void) {
    int signal = 0;
    int rc = ctc_result(syscall(SYS_prctl, PR_GET_PDEATHSIG, (unsigned long)&signal, 0UL, 0UL, 0UL));
    return rc < 0 ? rc : signal;
}
static inline int ctc_set_pdeathsig(int signal) {
    return ctc_result(syscall(SYS_prctl, PR_SET_PDEATHSIG, (unsigned long)signal, 0UL, 0UL, 0UL));
}

#endif
