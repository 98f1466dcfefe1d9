//! The tcfilter plumbing: an ingress qdisc on each side and a u32 match-all filter whose
//! mirred action redirects every frame to the other side's egress.
use rtnetlink::Handle;

/// tc's `protocol all`: ETH_P_ALL in network byte order, as the kernel compares it.
const PROTOCOL_ALL: u16 = (libc::ETH_P_ALL as u16).to_be();

/// Frames arriving on `a` leave through `b`, and those arriving on `b` leave through `a`.
pub async fn redirect_both_ways(h: &Handle, a: u32, b: u32) -> Result<(), rtnetlink::Error> {
    for (from, to) in [(a, b), (b, a)] {
        h.qdisc().add(from as i32).ingress().execute().await?;
        h.traffic_filter(from as i32)
            .add()
            .ingress()
            .protocol(PROTOCOL_ALL)
            .redirect(to)?
            .execute()
            .await?;
    }
    Ok(())
}

/// Removes the ingress qdisc of `index`, and its filters with it.
pub async fn remove_ingress(h: &Handle, index: u32) -> Result<(), rtnetlink::Error> {
    let mut del = h.qdisc().del(index as i32);
    let hdr = &mut del.message_mut().header;
    hdr.parent = rtnetlink::packet_route::tc::TcHandle::INGRESS;
    hdr.handle = rtnetlink::packet_route::tc::TcHandle {
        major: 0xffff,
        minor: 0,
    };
    del.execute().await
}
