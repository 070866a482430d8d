import CNetlink

// The only file of this target that names CNetlink's constants. C enums and macros import as `Int` or `Int32`;
// they are converted to the widths the kernel's structs use, once, here.

// NETLINK_SOCK_DIAG and its one request type (<linux/sock_diag.h>).
let _NETLINK_SOCK_DIAG = CInt(NETLINK_SOCK_DIAG)
let _SOCK_DIAG_BY_FAMILY = UInt16(SOCK_DIAG_BY_FAMILY)

// Destroy multicast groups (SKNLGRP_*), numbered from 1 as `bind()`'s group bits are.
let _SKNLGRP_INET_TCP_DESTROY = UInt32(SKNLGRP_INET_TCP_DESTROY.rawValue)
let _SKNLGRP_INET_UDP_DESTROY = UInt32(SKNLGRP_INET_UDP_DESTROY.rawValue)
let _SKNLGRP_INET6_TCP_DESTROY = UInt32(SKNLGRP_INET6_TCP_DESTROY.rawValue)
let _SKNLGRP_INET6_UDP_DESTROY = UInt32(SKNLGRP_INET6_UDP_DESTROY.rawValue)

// inet_diag (<linux/inet_diag.h>).
let _INET_DIAG_NOCOOKIE: UInt32 = cnl_inet_diag_nocookie()
let _INET_DIAG_PROTOCOL = UInt16(INET_DIAG_PROTOCOL)

// Netlink framing.
let _NLMSG_ERROR = UInt16(NLMSG_ERROR)
let _NLMSG_DONE = UInt16(NLMSG_DONE)
let _NLMSG_NOOP = UInt16(NLMSG_NOOP)
let _NLMSG_OVERRUN = UInt16(NLMSG_OVERRUN)
let _NLM_F_REQUEST = UInt16(NLM_F_REQUEST)
let _NLM_F_DUMP = UInt16(NLM_F_DUMP)
let _NLM_F_DUMP_INTR = UInt16(NLM_F_DUMP_INTR)
let _NLA_F_NESTED = UInt16(NLA_F_NESTED)
let _NLA_F_NET_BYTEORDER = UInt16(NLA_F_NET_BYTEORDER)

// Sizes of the kernel structs, as the compiler laid them out from the UAPI headers.
let nlmsghdrSize = MemoryLayout<nlmsghdr>.size
let nlattrSize = MemoryLayout<nlattr>.size
let inetDiagMessageSize = MemoryLayout<inet_diag_msg>.size
let inetDiagRequestSize = MemoryLayout<inet_diag_req_v2>.size
