// CNetlink: the only C the XFRM and SocketDiagnostics layers see.
//
// Exposes the kernel's XFRM and netlink UAPI (<linux/xfrm.h>, <linux/ipsec.h>, <linux/netlink.h>),
// its socket diagnostics UAPI (<linux/sock_diag.h>, <linux/inet_diag.h>: NETLINK_SOCK_DIAG, inet_diag),
// libmnl (socket lifecycle, sender checks) and libnl-xfrm-3 (used by the kernel-tier tests as an
// independent decoder of SA/SP dumps). Function-like macros, which Swift cannot import, get
// `cnl_` static inline equivalents here.
#ifndef CNETLINK_SHIM_H
#define CNETLINK_SHIM_H

#include <sys/types.h>
#include <sys/socket.h>
#include <netinet/in.h>
#include <arpa/inet.h>
#include <unistd.h>
#include <sys/syscall.h>
#include <linux/sched.h>
#include <errno.h>
#include <linux/netlink.h>
#include <linux/xfrm.h>
#include <linux/ipsec.h>
#include <linux/in.h>
#include <linux/sock_diag.h>
#include <linux/inet_diag.h>
#include <libmnl/libmnl.h>
#include <netlink/netlink.h>
#include <netlink/cache.h>
#include <netlink/xfrm/sa.h>
#include <netlink/xfrm/sp.h>
#include <netlink/xfrm/selector.h>
#include <netlink/xfrm/template.h>
#include <netlink/xfrm/lifetime.h>

#ifndef SOL_NETLINK
#define SOL_NETLINK 270
#endif

static inline unsigned int cnl_nlmsg_align(unsigned int len) { return NLMSG_ALIGN(len); }
static inline unsigned int cnl_nlmsg_hdrlen(void) { return NLMSG_HDRLEN; }
static inline unsigned int cnl_nla_align(unsigned int len) { return NLA_ALIGN(len); }
static inline unsigned int cnl_nla_hdrlen(void) { return NLA_HDRLEN; }
/// `XFRM_INF` is `~(__u64)0`, a macro Swift imports as a negative literal on some toolchains.
static inline unsigned long long cnl_xfrm_inf(void) { return XFRM_INF; }
/// Netlink multicast group bit for `bind()`'s nl_groups (groups 1..32).
static inline unsigned int cnl_group_bit(unsigned int group) { return group ? (1u << (group - 1)) : 0; }
/// IP_XFRM_POLICY / IPV6_XFRM_POLICY option names (from <linux/in.h> / <linux/in6.h>).
static inline int cnl_ip_xfrm_policy(void) { return IP_XFRM_POLICY; }
static inline int cnl_ipv6_xfrm_policy(void) { return IPV6_XFRM_POLICY; }
/// `INET_DIAG_NOCOOKIE` is `(~0U)`, an expression Swift does not import.
static inline unsigned int cnl_inet_diag_nocookie(void) { return INET_DIAG_NOCOOKIE; }
/// setns(2) for a network namespace.
static inline int cnl_setns_net(int fd) { return (int)syscall(SYS_setns, fd, CLONE_NEWNET); }

#endif
