//! Keeping a simulcast publisher's layers bound across renegotiations.
//!
//! Applying a remote description makes the `rtc` stack rebuild the receiving track of every media
//! section that names a track (`a=msid`, `a=ssrc`), and for a section with `a=rid` lines the
//! rebuilt track knows the rids but not their SSRCs: the stack binds them again only from packets
//! that carry the `mid` and `rid` header extensions. Chromium writes those on a stream's first
//! packets only (until the receiver's reports acknowledge the SSRC), so after the SFU
//! renegotiated a browser's connection (a participant joining or leaving) the browser's
//! simulcast video matched no track any more and was dropped. The track named in the first
//! description is the one the SFU keeps: later descriptions of a publisher whose video is already
//! published go through [`keep_simulcast_receivers`], which takes the track naming out of its
//! simulcast sections, so the stack leaves their receiver, and the SSRCs it learnt, as they are.

/// Attribute lines that name a section's track and make the stack rebuild its receiver.
const TRACK_NAMING: [&str; 3] = ["a=msid:", "a=ssrc:", "a=ssrc-group:"];

/// `sdp` without the track-naming lines (`a=msid`, `a=ssrc`, `a=ssrc-group`) of its media
/// sections that send simulcast (`a=simulcast:send`); everything else, line endings included,
/// unchanged.
pub(crate) fn keep_simulcast_receivers(sdp: &str) -> String {
    let mut out = String::with_capacity(sdp.len());
    let mut section: Vec<&str> = Vec::new();
    let flush = |section: &mut Vec<&str>, out: &mut String| {
        let simulcast = section.iter().any(|line| line.trim_end().starts_with("a=simulcast:send"));
        for line in section.drain(..) {
            if simulcast && TRACK_NAMING.iter().any(|prefix| line.starts_with(prefix)) {
                continue;
            }
            out.push_str(line);
        }
    };
    for line in sdp.split_inclusive('\n') {
        if line.starts_with("m=") {
            flush(&mut section, &mut out);
        }
        section.push(line);
    }
    flush(&mut section, &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const ANSWER: &str = "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\na=msid-semantic: WMS *\r\n\
        m=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:0\r\na=sendrecv\r\na=msid:s a\r\na=ssrc:11 msid:s a\r\n\
        m=video 9 UDP/TLS/RTP/SAVPF 96\r\na=mid:1\r\na=sendrecv\r\na=msid:s v\r\na=ssrc-group:FID 21 22\r\n\
        a=ssrc:21 cname:x\r\na=rid:f send\r\na=rid:q send\r\na=simulcast:send f;q\r\n\
        m=video 9 UDP/TLS/RTP/SAVPF 96\r\na=mid:2\r\na=recvonly\r\n";

    #[test]
    fn only_the_simulcast_section_loses_its_track_naming() {
        let kept = keep_simulcast_receivers(ANSWER);
        let expected = "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\na=msid-semantic: WMS *\r\n\
            m=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:0\r\na=sendrecv\r\na=msid:s a\r\na=ssrc:11 msid:s a\r\n\
            m=video 9 UDP/TLS/RTP/SAVPF 96\r\na=mid:1\r\na=sendrecv\r\n\
            a=rid:f send\r\na=rid:q send\r\na=simulcast:send f;q\r\n\
            m=video 9 UDP/TLS/RTP/SAVPF 96\r\na=mid:2\r\na=recvonly\r\n";
        assert_eq!(kept, expected);
    }

    #[test]
    fn a_description_without_simulcast_is_unchanged() {
        let plain = "v=0\nm=video 9 UDP/TLS/RTP/SAVPF 96\na=mid:0\na=msid:s v\na=ssrc:5 msid:s v\n";
        assert_eq!(keep_simulcast_receivers(plain), plain);
        assert_eq!(keep_simulcast_receivers(""), "");
    }
}
