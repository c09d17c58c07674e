/*
 * The kernel fast path of same-codec relays: a TC (TCX) ingress program that
 * forwards an RTP packet arriving at one of the gateway's media ports the way
 * the room's relay would, without waking the gateway: source and destination
 * rewritten to the other leg's, payload type, sequence number, timestamp and
 * SSRC mapped into the other leg's stream, and the checksums mended.
 *
 * The gateway (gateway/src/fast_path.rs) writes one rule per relayed
 * direction, keyed by the receiving port, and takes it back whenever the
 * room must see the packets again. The program forwards only what the room
 * would forward unchanged: plain RTP (no padding, extension or CSRC) of the
 * latched far end's address, SSRC and payload type, with a sequence number
 * the relay would map the same way. Anything else (DTMF events, a new SSRC, a
 * jump, RTCP, another source) goes on to the gateway's socket unchanged, and
 * the gateway takes the rule back before handling it.
 *
 * No libbpf: the few helpers are declared here by number, so that building
 * needs clang and the kernel's UAPI headers only.
 */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/udp.h>

#define SEC(name) __attribute__((section(name), used))
#define INLINE static inline __attribute__((always_inline))

/* TCX verdicts (linux/bpf.h of kernels older than 6.6 lacks them). */
#define TCX_NEXT -1
#define TCX_PASS 0

/* The loopback interface's index, in every network namespace. */
#define LOOPBACK_IFINDEX 1

/* RFC 3550's limits, as the room's relay and statistics use them. */
#define MAX_DROPOUT 3000
#define MAX_MISORDER 100
#define JITTER_DISCONTINUITY_SECS 3

#define IP_OFFSET ETH_HLEN
#define UDP_OFFSET (IP_OFFSET + sizeof(struct iphdr))
#define RTP_OFFSET (UDP_OFFSET + sizeof(struct udphdr))
#define RTP_HEADER 12
#define IP_CHECKSUM_AT (IP_OFFSET + __builtin_offsetof(struct iphdr, check))
#define UDP_CHECKSUM_AT (UDP_OFFSET + __builtin_offsetof(struct udphdr, check))

static void *(*bpf_map_lookup_elem)(void *map, const void *key) = (void *)BPF_FUNC_map_lookup_elem;
static __u64 (*bpf_ktime_get_ns)(void) = (void *)BPF_FUNC_ktime_get_ns;
static long (*bpf_l3_csum_replace)(struct __sk_buff *skb, __u32 offset, __u64 from, __u64 to,
                                   __u64 size) = (void *)BPF_FUNC_l3_csum_replace;
static long (*bpf_l4_csum_replace)(struct __sk_buff *skb, __u32 offset, __u64 from, __u64 to,
                                   __u64 flags) = (void *)BPF_FUNC_l4_csum_replace;
static long (*bpf_redirect_neigh)(__u32 ifindex, void *params, int plen,
                                  __u64 flags) = (void *)BPF_FUNC_redirect_neigh;

/*
 * One relayed direction. Fields marked "network" are in network byte order,
 * as on the wire; the rest in host order. Mirrored by `Rule` in
 * gateway/src/fast_path.rs: keep the two the same, field for field.
 */
struct rule {
    /* Written by the gateway. */
    __u32 bound_address;   /* network; 0: any local address */
    __u32 source_address;  /* network: the latched far end */
    __u16 source_port;     /* network */
    __u8 payload_type;
    __u8 out_payload_type;
    __u32 ssrc;            /* network */
    __u32 out_ssrc;        /* network */
    __u32 out_source_address;      /* network: the other leg's local address */
    __u32 out_destination_address; /* network: the other leg's far end */
    __u16 out_source_port;         /* network */
    __u16 out_destination_port;    /* network */
    __u16 sequence_offset;
    __u16 anchor_sequence;
    __u32 timestamp_offset;
    __u32 clock_rate;
    /* 0: the far end is on this host, the stack delivers the packet;
       else the interface it leaves by (bpf_redirect_neigh). */
    __u32 redirect_ifindex;
    /* Kept by the program from the gateway's starting values. */
    __u32 extended_highest_sequence;
    __u32 highest_timestamp;
    __u32 jitter_q4;
    __u32 last_transit;
    __u32 has_transit;
    __u32 padding;
    __u64 packets;
    __u64 octets;
    __u64 last_arrival_ns;
};

_Static_assert(sizeof(struct rule) == 96, "struct rule is mirrored in fast_path.rs");

struct map_definition {
    __u32 type;
    __u32 key_size;
    __u32 value_size;
    __u32 max_entries;
    __u32 map_flags;
};

/* Keyed by the receiving port (host order); the gateway sets the size. */
struct map_definition RULES SEC("maps") = {
    .type = BPF_MAP_TYPE_HASH,
    .key_size = sizeof(__u16),
    .value_size = sizeof(struct rule),
    .max_entries = 1,
    .map_flags = BPF_F_NO_PREALLOC,
};

INLINE __u16 load16(const __u8 *at) { return ((__u16)at[0] << 8) | at[1]; }

INLINE __u32 load32(const __u8 *at)
{
    return ((__u32)at[0] << 24) | ((__u32)at[1] << 16) | ((__u32)at[2] << 8) | at[3];
}

INLINE void store16(__u8 *at, __u16 value)
{
    at[0] = value >> 8;
    at[1] = value;
}

INLINE void store32(__u8 *at, __u32 value)
{
    at[0] = value >> 24;
    at[1] = value >> 16;
    at[2] = value >> 8;
    at[3] = value;
}

/* RFC 3550 A.8, in the statistics' fixed point (times 16). */
INLINE void update_jitter(struct rule *rule, __u32 timestamp, __u64 now)
{
    __u32 arrival = (now / 1000) * rule->clock_rate / 1000000;
    __u32 transit = arrival - timestamp;
    if (rule->has_transit) {
        __s32 delta = (__s32)(transit - rule->last_transit);
        __u32 difference = delta < 0 ? -(__u32)delta : (__u32)delta;
        if (difference > JITTER_DISCONTINUITY_SECS * rule->clock_rate)
            rule->jitter_q4 = 0;
        else
            rule->jitter_q4 = rule->jitter_q4 + difference - ((rule->jitter_q4 + 8) >> 4);
    }
    rule->last_transit = transit;
    rule->has_transit = 1;
}

SEC("classifier")
int relay(struct __sk_buff *skb)
{
    __u8 *data = (void *)(long)skb->data;
    __u8 *end = (void *)(long)skb->data_end;
    if (data + RTP_OFFSET + RTP_HEADER > end)
        return TCX_NEXT;
    struct ethhdr *ethernet = (void *)data;
    struct iphdr *ip = (void *)(data + IP_OFFSET);
    struct udphdr *udp = (void *)(data + UDP_OFFSET);
    __u8 *rtp = data + RTP_OFFSET;
    if (ethernet->h_proto != __builtin_bswap16(ETH_P_IP) || ip->ihl != 5 ||
        ip->protocol != IPPROTO_UDP || (ip->frag_off & __builtin_bswap16(0x3fff)))
        return TCX_NEXT;
    __u16 port = __builtin_bswap16(udp->dest);
    struct rule *rule = bpf_map_lookup_elem(&RULES, &port);
    if (!rule || (rule->bound_address && rule->bound_address != ip->daddr))
        return TCX_NEXT;
    __u16 udp_length = __builtin_bswap16(udp->len);
    /* A UDP length that is not the datagram's is a forged or broken packet:
       the stack drops or trims it; the kernel path does not forward it. */
    if (udp_length != __builtin_bswap16(ip->tot_len) - sizeof(struct iphdr))
        return TCX_NEXT;
    /* V=2 without padding, extension or CSRCs; the latched source's stream. */
    if (ip->saddr != rule->source_address || udp->source != rule->source_port ||
        rtp[0] != 0x80 || (rtp[1] & 0x7f) != rule->payload_type ||
        *(__u32 *)(rtp + 8) != rule->ssrc || udp_length < sizeof(struct udphdr) + RTP_HEADER)
        return TCX_NEXT;

    __u16 sequence = load16(rtp + 2);
    __u32 timestamp = load32(rtp + 4);
    __u16 highest = rule->extended_highest_sequence;
    __u16 ahead = sequence - highest;
    __u16 behind = highest - sequence;
    int advances = ahead != 0 && ahead < MAX_DROPOUT;
    /* What the relay would drop or map anew is the room's to handle. */
    if (!advances && ahead != 0 &&
        (behind > MAX_MISORDER || (__s16)(sequence - rule->anchor_sequence) < 0))
        return TCX_NEXT;

    __u64 now = bpf_ktime_get_ns();
    if (advances) {
        if (sequence < highest)
            rule->extended_highest_sequence += 0x10000;
        rule->extended_highest_sequence = (rule->extended_highest_sequence & 0xffff0000) | sequence;
        rule->highest_timestamp = timestamp;
        if ((__u16)(sequence - rule->anchor_sequence) > MAX_MISORDER)
            rule->anchor_sequence = sequence - MAX_MISORDER;
    }
    update_jitter(rule, timestamp, now);
    __sync_fetch_and_add(&rule->packets, 1);
    __sync_fetch_and_add(&rule->octets, udp_length - sizeof(struct udphdr) - RTP_HEADER);
    rule->last_arrival_ns = now;

    __u32 old_source = ip->saddr;
    __u32 old_destination = ip->daddr;
    __u32 old_ports = *(__u32 *)&udp->source;
    __u32 old_first = *(__u32 *)rtp;
    __u32 old_timestamp = *(__u32 *)(rtp + 4);
    __u32 old_ssrc = *(__u32 *)(rtp + 8);

    ip->saddr = rule->out_source_address;
    ip->daddr = rule->out_destination_address;
    udp->source = rule->out_source_port;
    udp->dest = rule->out_destination_port;
    rtp[1] = (rtp[1] & 0x80) | rule->out_payload_type;
    store16(rtp + 2, sequence + rule->sequence_offset);
    store32(rtp + 4, timestamp + rule->timestamp_offset);
    *(__u32 *)(rtp + 8) = rule->out_ssrc;

    __u32 new_source = ip->saddr;
    __u32 new_destination = ip->daddr;
    __u32 new_ports = *(__u32 *)&udp->source;
    __u32 new_first = *(__u32 *)rtp;
    __u32 new_timestamp = *(__u32 *)(rtp + 4);
    __u32 new_ssrc = *(__u32 *)(rtp + 8);
    __u32 redirect = rule->redirect_ifindex;
    /* A loopback destination is a martian to any interface but lo: what
       came in elsewhere goes out through lo, routed, rather than up. */
    if (!redirect && ((__u8 *)&ip->daddr)[0] == 127 && skb->ifindex != LOOPBACK_IFINDEX)
        redirect = LOOPBACK_IFINDEX;

    /* The helpers move the packet's data: no direct access after them. */
    __u64 pseudo = BPF_F_PSEUDO_HDR | BPF_F_MARK_MANGLED_0 | 4;
    __u64 plain = BPF_F_MARK_MANGLED_0 | 4;
    bpf_l3_csum_replace(skb, IP_CHECKSUM_AT, old_source, new_source, 4);
    bpf_l3_csum_replace(skb, IP_CHECKSUM_AT, old_destination, new_destination, 4);
    bpf_l4_csum_replace(skb, UDP_CHECKSUM_AT, old_source, new_source, pseudo);
    bpf_l4_csum_replace(skb, UDP_CHECKSUM_AT, old_destination, new_destination, pseudo);
    bpf_l4_csum_replace(skb, UDP_CHECKSUM_AT, old_ports, new_ports, plain);
    bpf_l4_csum_replace(skb, UDP_CHECKSUM_AT, old_first, new_first, plain);
    bpf_l4_csum_replace(skb, UDP_CHECKSUM_AT, old_timestamp, new_timestamp, plain);
    bpf_l4_csum_replace(skb, UDP_CHECKSUM_AT, old_ssrc, new_ssrc, plain);
    if (redirect)
        return bpf_redirect_neigh(redirect, 0, 0, 0);
    return TCX_PASS;
}

char LICENSE[] SEC("license") = "GPL";
