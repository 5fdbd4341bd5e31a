//! Where a participant's media credential travels to a selective forwarding unit: one session
//! attribute of its SDP offer, `a=x-callplus-media-token:<token>`.
//!
//! The signalling server issues the token for one (call, user, device); the client's media
//! adapter puts it into the first offer it sends to the SFU, and the SFU answers (and so hands
//! out its ICE credentials and DTLS fingerprint) only to an offer whose token is valid for the
//! device that sent it. Both sides use these two functions, so the attribute is spelled once.

/// Name of the SDP session attribute carrying the token.
pub const MEDIA_TOKEN_ATTRIBUTE: &str = "x-callplus-media-token";

/// Returns `sdp` with the token added as a session attribute (after the `t=` line, where
/// session attributes begin). An SDP without a `t=` line gets it appended.
pub fn attach_media_token(sdp: &str, token: &str) -> String {
    let eol = if sdp.contains("\r\n") { "\r\n" } else { "\n" };
    let line = format!("a={MEDIA_TOKEN_ATTRIBUTE}:{token}{eol}");
    let mut out = String::with_capacity(sdp.len() + line.len());
    let mut added = false;
    for part in sdp.split_inclusive('\n') {
        out.push_str(part);
        if !added && part.starts_with("t=") {
            out.push_str(&line);
            added = true;
        }
    }
    if !added {
        if !out.is_empty() && !out.ends_with('\n') {
            out.push_str(eol);
        }
        out.push_str(&line);
    }
    out
}

/// The token of an SDP offer, if it carries one in the session section (before the first
/// `m=` line).
pub fn media_token(sdp: &str) -> Option<&str> {
    let prefix = format!("a={MEDIA_TOKEN_ATTRIBUTE}:");
    sdp.lines()
        .take_while(|line| !line.starts_with("m="))
        .find_map(|line| line.trim_end_matches('\r').strip_prefix(prefix.as_str()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const OFFER: &str = "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\na=group:BUNDLE 0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:0\r\n";

    #[test]
    fn token_goes_into_the_session_section_and_comes_back() {
        let with = attach_media_token(OFFER, "abc.DEF-1");
        assert_eq!(media_token(&with), Some("abc.DEF-1"));
        let at = with.find("a=x-callplus-media-token").unwrap_or(usize::MAX);
        assert!(at > with.find("t=0 0").unwrap_or(0) && at < with.find("m=audio").unwrap_or(0));
        assert_eq!(with.len(), OFFER.len() + "a=x-callplus-media-token:abc.DEF-1\r\n".len());
    }

    #[test]
    fn a_token_inside_a_media_section_or_none_is_not_taken() {
        assert_eq!(media_token(OFFER), None);
        let late = format!("{OFFER}a={MEDIA_TOKEN_ATTRIBUTE}:x\r\n");
        assert_eq!(media_token(&late), None);
        assert_eq!(media_token(&attach_media_token("v=0", "t1")), Some("t1"));
    }
}
