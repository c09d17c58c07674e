//! The per-frame calls allocate nothing: buffers are made up front.
//! (Counted through Rust's allocator; libopus and libspeex allocate only
//! when their states are created.)

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use common::*;
use dialtone_codecs::{
    new_decoder, new_encoder, Codec, DtmfDetector, SampleRate, Transcoder, MAX_FRAME_SAMPLES,
    MAX_PAYLOAD_LEN,
};

/// Counts allocations per thread, so tests running in parallel (and the
/// test harness) do not disturb each other's counts.
struct CountingAllocator;

thread_local! {
    static ALLOCATIONS: Cell<usize> = const { Cell::new(0) };
}

// SAFETY: forwards to the system allocator unchanged; it only counts.
unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.with(|count| count.set(count.get() + 1));
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.with(|count| count.set(count.get() + 1));
        // SAFETY: same contract as the caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: CountingAllocator = CountingAllocator;

fn allocations_during(work: impl FnOnce()) -> usize {
    let before = ALLOCATIONS.with(Cell::get);
    work();
    ALLOCATIONS.with(Cell::get) - before
}

#[test]
fn the_counter_sees_allocations() {
    let count = allocations_during(|| {
        std::hint::black_box(vec![0u8; 16]);
    });
    assert_eq!(count, 1);
}

#[test]
fn transcoding_concealing_and_recovering_allocate_nothing() {
    for from in Codec::ALL {
        let frames = sine_frames(from.sample_rate(), TONE_HZ, TONE_AMPLITUDE, 10);
        let mut encoder = new_encoder(from).unwrap();
        let payloads = encode_all(encoder.as_mut(), &frames).unwrap();
        for to in Codec::ALL.into_iter().filter(|&to| to != from) {
            let mut transcoder = Transcoder::new(from, to).unwrap();
            let mut out = [0u8; MAX_PAYLOAD_LEN];
            let count = allocations_during(|| {
                for payload in &payloads[..8] {
                    transcoder.transcode(payload, &mut out).unwrap();
                }
                transcoder.conceal_into(&mut out).unwrap();
                transcoder.recover_into(&payloads[9], &mut out).unwrap();
                transcoder.transcode(&payloads[9], &mut out).unwrap();
            });
            assert_eq!(count, 0, "{from} → {to}");
        }
    }
}

#[test]
fn encoding_and_decoding_allocate_nothing() {
    for codec in Codec::ALL {
        let frames = sine_frames(codec.sample_rate(), TONE_HZ, TONE_AMPLITUDE, 5);
        let mut encoder = new_encoder(codec).unwrap();
        let mut decoder = new_decoder(codec).unwrap();
        let mut payload = [0u8; MAX_PAYLOAD_LEN];
        let mut pcm = [0i16; MAX_FRAME_SAMPLES];
        let count = allocations_during(|| {
            for frame in &frames {
                let len = encoder.encode(frame, &mut payload).unwrap();
                decoder.decode(&payload[..len], &mut pcm).unwrap();
            }
            decoder.conceal(&mut pcm).unwrap();
        });
        assert_eq!(count, 0, "{codec}");
    }
}

#[test]
fn dtmf_detection_allocates_nothing() {
    for rate in [SampleRate::Hz8000, SampleRate::Hz16000] {
        let frames = sine_frames(rate, TONE_HZ, TONE_AMPLITUDE, 10);
        let mut detector = DtmfDetector::new(rate);
        let count = allocations_during(|| {
            for frame in &frames {
                detector.process(frame).unwrap();
            }
        });
        assert_eq!(count, 0, "{rate:?}");
    }
}
