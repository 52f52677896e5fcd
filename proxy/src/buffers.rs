//! `limits.connectionBufferBytes` turned into each protocol library's settings, downstream
//! and upstream alike, so that what one slow peer can make the proxy hold is one documented
//! number per connection (HTTP/1) or per stream (HTTP/2), and the rest is backpressure.

/// Request and response heads larger than this are refused (431 downstream; an upstream's
/// oversized head is a failed try).
pub const MAX_HEADER_BYTES: usize = 60 * 1024;

#[derive(Clone, Copy, Debug)]
pub struct Buffers {
    bytes: usize,
}

impl Buffers {
    pub fn new(bytes: usize) -> Buffers {
        Buffers { bytes }
    }

    /// HTTP/1 read and write buffer: a whole head must still fit in it.
    pub fn h1_max_buf(self) -> usize {
        self.bytes.max(MAX_HEADER_BYTES + 16 * 1024)
    }

    /// What a peer may send on one HTTP/2 stream before the proxy reads it.
    pub fn h2_stream_window(self) -> u32 {
        u32::try_from(self.bytes).unwrap_or(u32::MAX >> 1).min(u32::MAX >> 1)
    }

    /// What the proxy queues to send on one HTTP/2 stream before it stops reading the source.
    pub fn h2_send_buf(self) -> usize {
        self.bytes
    }

    /// What a downstream client may send on all its streams before the proxy reads: eight
    /// streams' worth, so one client's uploads stay bounded; its own streams share it.
    pub fn h2_downstream_connection_window(self) -> u32 {
        self.h2_stream_window().saturating_mul(8)
    }

    /// An upstream connection's window is the largest HTTP/2 allows: every stream is bounded by
    /// its own window, so streams whose readers stall can never use up the connection's and
    /// stall the other clients' streams sharing it.
    pub fn h2_connection_window(self) -> u32 {
        u32::MAX >> 1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_head_always_fits_and_windows_stay_in_range() {
        assert_eq!(Buffers::new(16 * 1024).h1_max_buf(), MAX_HEADER_BYTES + 16 * 1024);
        assert_eq!(Buffers::new(1 << 20).h1_max_buf(), 1 << 20);
        assert_eq!(Buffers::new(usize::MAX).h2_stream_window(), (1 << 31) - 1);
        assert_eq!(Buffers::new(128 * 1024).h2_stream_window(), 128 * 1024);
    }
}
