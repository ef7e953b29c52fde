//! nfnetlink framing shared by the conntrack and NFLOG readers: netlink messages in a
//! received datagram, the nfgenmsg header after each, and the attributes after that.
//!
//! Hand-written on netlink-packet-core's attribute iterator because the few message kinds
//! the readers need are a header and a flat walk over attributes (see the crate's
//! Cargo.toml for why not netlink-packet-netfilter).

use netlink_packet_core::{NLA_HEADER_SIZE, NlaBuffer, NlasIterator};

use super::DecodeError;

/// `sizeof(struct nlmsghdr)`.
const NLMSG_HDR: usize = 16;
/// `sizeof(struct nfgenmsg)`: family, version, resource id.
const NFGENMSG: usize = 4;

/// One nfnetlink message of a datagram: what the readers dispatch on and decode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NfMessage<'a> {
    /// nfnetlink subsystem (high byte of the netlink type: 1 conntrack, 4 ulog/NFLOG).
    pub subsys: u8,
    /// Message type within the subsystem (low byte).
    pub msg: u8,
    /// Netlink header flags (conntrack sets `NLM_F_CREATE` on NEW events).
    pub flags: u16,
    /// nfgenmsg family (`AF_INET`, `AF_INET6`, ...).
    pub family: u8,
    /// The attributes after the nfgenmsg header.
    pub attrs: &'a [u8],
}

/// The nfnetlink messages of one received datagram, in order. Netlink control messages
/// (`NLMSG_NOOP`, `NLMSG_ERROR`, `NLMSG_DONE`, type < 16) are skipped: a multicast listener
/// gets none worth reading.
pub fn messages(buf: &[u8]) -> Result<Vec<NfMessage<'_>>, DecodeError> {
    let mut out = Vec::new();
    let mut pos = 0;
    while buf.len() - pos >= NLMSG_HDR {
        let at = &buf[pos..];
        let len = u32::from_ne_bytes([at[0], at[1], at[2], at[3]]) as usize;
        if len < NLMSG_HDR || len > at.len() {
            return Err(DecodeError::Framing {
                offset: pos,
                what: format!("netlink length {len} with {} bytes left", at.len()),
            });
        }
        let kind = u16::from_ne_bytes([at[4], at[5]]);
        let flags = u16::from_ne_bytes([at[6], at[7]]);
        if kind >= 16 {
            if len < NLMSG_HDR + NFGENMSG {
                return Err(DecodeError::Framing {
                    offset: pos,
                    what: format!("netlink length {len} leaves no room for nfgenmsg"),
                });
            }
            out.push(NfMessage {
                subsys: (kind >> 8) as u8,
                msg: (kind & 0xff) as u8,
                flags,
                family: at[NLMSG_HDR],
                attrs: &at[NLMSG_HDR + NFGENMSG..len],
            });
        }
        pos += len.next_multiple_of(4).min(at.len());
    }
    Ok(out)
}

/// How a dump's datagram ends it: `Some(0)` for `NLMSG_DONE`, `Some(errno)` (positive) for an
/// `NLMSG_ERROR` that is not an ack, `None` when the dump goes on.
pub fn dump_end(buf: &[u8]) -> Option<i32> {
    let mut pos = 0;
    while buf.len() - pos >= NLMSG_HDR {
        let at = &buf[pos..];
        let len = u32::from_ne_bytes([at[0], at[1], at[2], at[3]]) as usize;
        if len < NLMSG_HDR || len > at.len() {
            return None;
        }
        match u16::from_ne_bytes([at[4], at[5]]) {
            3 => return Some(0),
            2 if len >= NLMSG_HDR + 4 => {
                let code = i32::from_ne_bytes([at[16], at[17], at[18], at[19]]);
                if code != 0 {
                    return Some(-code);
                }
            }
            _ => {}
        }
        pos += len.next_multiple_of(4).min(at.len());
    }
    None
}

/// The attributes of `buf` as `(type without flag bits, value)`; `what` names the enclosing
/// attribute in errors.
pub fn attrs<'a>(buf: &'a [u8], what: &str) -> Result<Vec<(u16, &'a [u8])>, DecodeError> {
    NlasIterator::new(buf)
        .map(|nla| {
            nla.map(|n: NlaBuffer<&'a [u8]>| {
                let (kind, len) = (n.kind(), n.value_length());
                // new_checked guaranteed the header and the value are inside the buffer.
                (
                    kind,
                    &n.into_inner()[NLA_HEADER_SIZE..NLA_HEADER_SIZE + len],
                )
            })
            .map_err(|source| DecodeError::Attribute {
                what: what.to_string(),
                source,
            })
        })
        .collect()
}

/// A big-endian integer attribute of exactly `N` bytes.
pub fn be<const N: usize>(value: &[u8], what: &str) -> Result<[u8; N], DecodeError> {
    value.try_into().map_err(|_| DecodeError::Length {
        what: what.to_string(),
        expected: N,
        got: value.len(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A netlink message of type `kind` with an nfgenmsg for `family` and `attrs`.
    pub(crate) fn frame(kind: u16, flags: u16, family: u8, attrs: &[u8]) -> Vec<u8> {
        let len = (NLMSG_HDR + NFGENMSG + attrs.len()) as u32;
        let mut v = Vec::new();
        v.extend(len.to_ne_bytes());
        v.extend(kind.to_ne_bytes());
        v.extend(flags.to_ne_bytes());
        v.extend([0u8; 8]);
        v.extend([family, 0, 0, 0]);
        v.extend(attrs);
        while v.len() % 4 != 0 {
            v.push(0);
        }
        v
    }

    #[test]
    fn splits_a_datagram_into_messages_and_skips_control_ones() {
        let mut buf = frame(0x0100, 0x600, 2, &[8, 0, 12, 0, 0, 0, 0, 7]);
        // NLMSG_DONE (type 3) with a 4-byte payload: skipped.
        buf.extend(20u32.to_ne_bytes());
        buf.extend(3u16.to_ne_bytes());
        buf.extend([0u8; 14]);
        buf.extend(frame(0x0402, 0, 10, &[]));
        let m = messages(&buf).unwrap();
        assert_eq!(m.len(), 2);
        assert_eq!(
            (m[0].subsys, m[0].msg, m[0].flags, m[0].family),
            (1, 0, 0x600, 2)
        );
        assert_eq!(
            attrs(m[0].attrs, "x").unwrap(),
            vec![(12, &[0, 0, 0, 7][..])]
        );
        assert_eq!((m[1].subsys, m[1].msg, m[1].family), (4, 2, 10));
        assert!(m[1].attrs.is_empty());
    }

    #[test]
    fn a_dump_ends_with_done_or_an_error() {
        let mut buf = frame(0x0100, 0x2, 2, &[]);
        assert_eq!(dump_end(&buf), None);
        buf.extend(20u32.to_ne_bytes());
        buf.extend(3u16.to_ne_bytes());
        buf.extend([0u8; 14]);
        assert_eq!(dump_end(&buf), Some(0));
        let mut err = Vec::new();
        err.extend(36u32.to_ne_bytes());
        err.extend(2u16.to_ne_bytes());
        err.extend([0u8; 10]);
        err.extend((-1i32).to_ne_bytes());
        err.extend([0u8; 16]);
        assert_eq!(dump_end(&err), Some(1), "EPERM");
    }

    #[test]
    fn rejects_a_length_past_the_datagram() {
        let mut buf = frame(0x0100, 0, 2, &[]);
        buf[0] = 200;
        assert!(matches!(
            messages(&buf),
            Err(DecodeError::Framing { offset: 0, .. })
        ));
        assert!(matches!(
            attrs(&[9, 0, 1, 0], "CTA_TUPLE_ORIG"),
            Err(DecodeError::Attribute { .. })
        ));
        assert!(matches!(
            be::<4>(&[1, 2], "CTA_ID"),
            Err(DecodeError::Length {
                expected: 4,
                got: 2,
                ..
            })
        ));
    }
}
