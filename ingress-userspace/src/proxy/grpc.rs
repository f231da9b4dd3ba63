//! gRPC framing, for Istio's `istio_request_messages_total` and
//! `istio_response_messages_total`: a message is a 5-byte prefix (flag,
//! big-endian length) and that many bytes; messages span data frames freely.

/// Counts the messages in a stream of data chunks.
#[derive(Clone, Debug, Default)]
pub struct MessageCounter {
    prefix: [u8; 5],
    prefix_len: usize,
    /// Payload bytes still to skip in the current message.
    remaining: u64,
    pub messages: u64,
}

impl MessageCounter {
    pub fn feed(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            if self.remaining > 0 {
                let skip = self.remaining.min(data.len() as u64) as usize;
                self.remaining -= skip as u64;
                data = &data[skip..];
                continue;
            }
            let take = (5 - self.prefix_len).min(data.len());
            self.prefix[self.prefix_len..self.prefix_len + take].copy_from_slice(&data[..take]);
            self.prefix_len += take;
            data = &data[take..];
            if self.prefix_len == 5 {
                self.messages += 1;
                self.remaining = u64::from(u32::from_be_bytes([
                    self.prefix[1],
                    self.prefix[2],
                    self.prefix[3],
                    self.prefix[4],
                ]));
                self.prefix_len = 0;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(payload: &[u8]) -> Vec<u8> {
        let mut out = vec![0];
        out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        out.extend_from_slice(payload);
        out
    }

    #[test]
    fn counts_messages_across_any_chunking() {
        let mut stream = Vec::new();
        for payload in [&b"hello"[..], b"", b"a longer message body"] {
            stream.extend(message(payload));
        }
        for chunk in [1, 2, 3, 5, 7, stream.len()] {
            let mut counter = MessageCounter::default();
            for piece in stream.chunks(chunk) {
                counter.feed(piece);
            }
            assert_eq!(counter.messages, 3, "chunks of {chunk}");
        }
    }
}
