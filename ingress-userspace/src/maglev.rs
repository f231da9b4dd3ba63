//! Maglev consistent hashing (Maglev paper, section 3.4, with Katran's
//! weights), shared by the kernel's TCP tables (`kernel_plan`) and the
//! proxy's `consistentHash` load balancing. Pure.

/// 64-bit mix (splitmix64's finalizer) of an identity and a seed.
pub fn mix(identity: u64, seed: u64) -> u64 {
    let mut x = identity ^ seed;
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// A weighted Maglev table of `size` slots (a prime) over `members`
/// (`(identity, weight)`, in a canonical order the caller chooses): each
/// member walks its own permutation of the slots, given by an offset and a
/// skip from two hashes of its identity, and takes the next free slot on
/// its turn; a member gets a turn each time its accumulated weight reaches
/// the largest weight, so slot shares follow the weights. Slots hold the
/// member's index + 1; 0 only when no member has a weight.
pub fn table(members: &[(u64, u64)], size: u64) -> Vec<u32> {
    let mut table = vec![0u32; size as usize];
    let live: Vec<(usize, u64, u64)> = members
        .iter()
        .enumerate()
        .filter(|(_, (_, w))| *w > 0)
        .map(|(i, &(identity, weight))| (i, identity, weight))
        .collect();
    let Some(max_weight) = live.iter().map(|&(_, _, w)| w).max() else {
        return table;
    };
    let permutation: Vec<(u64, u64)> = live
        .iter()
        .map(|&(_, identity, _)| {
            let offset = mix(identity, 0x5eed_0ff5) % size;
            let skip = mix(identity, 0x5eed_5c1b) % (size - 1) + 1;
            (offset, skip)
        })
        .collect();
    let mut next = vec![0u64; live.len()];
    let mut credit = vec![0u64; live.len()];
    let mut filled = 0u64;
    while filled < size {
        for (k, &(index, _, weight)) in live.iter().enumerate() {
            credit[k] += weight;
            if credit[k] < max_weight {
                continue;
            }
            credit[k] -= max_weight;
            let (offset, skip) = permutation[k];
            // `skip` is coprime with the prime size, so the walk visits every
            // slot and finds a free one while the table is not full.
            loop {
                let slot = ((offset + next[k] * skip) % size) as usize;
                next[k] += 1;
                if table[slot] == 0 {
                    table[slot] = index as u32 + 1;
                    break;
                }
            }
            filled += 1;
            if filled == size {
                break;
            }
        }
    }
    table
}
