//! Link change notifications, so the daemon notices `ip link del flannel.1` and rebuilds the
//! device instead of silently losing the data plane.

use std::pin::Pin;
use std::task::{Context, Poll};

use futures::Stream;
use futures::channel::mpsc::UnboundedReceiver;
use rtnetlink::MulticastGroup;
use rtnetlink::packet_core::{NetlinkMessage, NetlinkPayload};
use rtnetlink::packet_route::RouteNetlinkMessage;
use rtnetlink::sys::SocketAddr;

use crate::error::{NetlinkError, Result};
use crate::link::LinkInfo;

/// One link notification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkEvent {
    /// RTM_NEWLINK: a link appeared or changed (flags, MTU, address...).
    NewLink {
        /// ifindex.
        index: u32,
        /// Name.
        name: String,
        /// Administratively up after the change.
        up: bool,
    },
    /// RTM_DELLINK: a link is gone.
    DelLink {
        /// ifindex it had.
        index: u32,
        /// Name it had.
        name: String,
    },
    /// The kernel dropped notifications (socket buffer overrun): the subscriber must re-read
    /// the state it cares about.
    Overrun,
}

/// A stream of [`LinkEvent`]s from RTNLGRP_LINK in the namespace where it was created.
///
/// Subscribe *before* checking for the device you watch, or a deletion in between is missed.
/// Dropping the stream closes its socket.
pub struct LinkEvents {
    rx: UnboundedReceiver<(NetlinkMessage<RouteNetlinkMessage>, SocketAddr)>,
    task: tokio::task::AbortHandle,
}

impl Drop for LinkEvents {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl LinkEvents {
    /// Subscribes in the calling thread's network namespace; the socket's driver task runs on
    /// the current tokio runtime.
    pub fn subscribe() -> Result<Self> {
        let rt = tokio::runtime::Handle::try_current()
            .map_err(|_| NetlinkError::NoRuntime("LinkEvents::subscribe"))?;
        let _guard = rt.enter();
        let (conn, _handle, rx) = rtnetlink::new_multicast_connection(&[MulticastGroup::Link])
            .map_err(|source| NetlinkError::Socket {
                op: "subscribe to link events",
                source,
            })?;
        let task = rt.spawn(conn).abort_handle();
        Ok(Self { rx, task })
    }
}

impl Stream for LinkEvents {
    type Item = LinkEvent;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<LinkEvent>> {
        loop {
            let (msg, _) = match Pin::new(&mut self.rx).poll_next(cx) {
                Poll::Ready(Some(m)) => m,
                Poll::Ready(None) => return Poll::Ready(None),
                Poll::Pending => return Poll::Pending,
            };
            let event = match msg.payload {
                NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(l)) => {
                    let info = LinkInfo::from_message(&l);
                    LinkEvent::NewLink {
                        index: info.index,
                        name: info.name,
                        up: info.up,
                    }
                }
                NetlinkPayload::InnerMessage(RouteNetlinkMessage::DelLink(l)) => {
                    let info = LinkInfo::from_message(&l);
                    LinkEvent::DelLink {
                        index: info.index,
                        name: info.name,
                    }
                }
                NetlinkPayload::Overrun(_) => LinkEvent::Overrun,
                _ => continue,
            };
            return Poll::Ready(Some(event));
        }
    }
}
