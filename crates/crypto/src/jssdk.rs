use sha1::{Digest, Sha1};

/// JS-SDK `wx.config` signature: sha1 of
/// `jsapi_ticket=..&noncestr=..&timestamp=..&url=..` with the URL's `#fragment` removed and no
/// escaping of any value.
pub fn jssdk_signature(jsapi_ticket: &str, noncestr: &str, timestamp: &str, url: &str) -> String {
    let url = url.split_once('#').map_or(url, |(before, _)| before);
    let mut hasher = Sha1::new();
    for (i, (name, value)) in [
        ("jsapi_ticket=", jsapi_ticket),
        ("noncestr=", noncestr),
        ("timestamp=", timestamp),
        ("url=", url),
    ]
    .into_iter()
    .enumerate()
    {
        if i > 0 {
            hasher.update(b"&");
        }
        hasher.update(name.as_bytes());
        hasher.update(value.as_bytes());
    }
    hex::encode(hasher.finalize())
}

#[cfg(test)]
mod tests {
    use super::*;

    const TICKET: &str =
        "sM4AOVdWfPE4DxkXGEs8VMCPGGVi4C3VM0P37wVUCFvkVAy_90u5h9nbSlYy3-Sl-HhTdfl2fzFy1AOcHKP7qg";

    #[test]
    fn v7_vectors() {
        assert_eq!(
            jssdk_signature(
                TICKET,
                "Wm3WZYTPz0wzccnW",
                "1414587457",
                "http://mp.weixin.qq.com"
            ),
            "f4d90daf4b3bca3078ab155816175ba34c443a7b"
        );
        assert_eq!(
            jssdk_signature(
                TICKET,
                "Wm3WZYTPz0wzccnW",
                "1414587457",
                "http://mp.weixin.qq.com?params=value"
            ),
            "0f9de62fce790f9a083d5c99e95740ceb90c27ed"
        );
    }

    #[test]
    fn fragment_is_ignored() {
        assert_eq!(
            jssdk_signature(
                TICKET,
                "Wm3WZYTPz0wzccnW",
                "1414587457",
                "http://mp.weixin.qq.com#x"
            ),
            "f4d90daf4b3bca3078ab155816175ba34c443a7b"
        );
    }
}
