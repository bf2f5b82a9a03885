use std::cell::RefCell;

use bounce::Chain;

use super::test_utils::*;
use super::*;

fn one_buffer(i: u64) -> [(u64, u32, bool); 1] {
    [(0x10_0000 + i * 0x100, 8, true)]
}

#[test]
fn a_budget_bounds_the_chains_per_call_and_loses_none() {
    let mem = guest_mem();
    let mut t = TestQueue::new(&mem, 16);
    let heads: Vec<u16> = (0..10).map(|i| t.add_chain(&one_buffer(i))).collect();
    let mut q = t.dma_queue();
    let (irq, irqfd) = test_interrupt();
    let mut seen = Vec::new();
    let mut step = |want_used: usize| {
        let r = drain_queue(&mut q, &irq, 4, |_, c: &Chain| {
            seen.push(c.head);
            8
        });
        assert_eq!(t.used().len(), want_used);
        // What was served is signalled at once, also when the budget cut the call short.
        assert_eq!(irqfd.read().unwrap(), 1);
        r.unwrap()
    };
    assert_eq!(step(4), QueueState::MoreWork);
    assert_eq!(step(8), QueueState::MoreWork);
    assert_eq!(step(10), QueueState::Drained);
    assert_eq!(seen, heads, "every chain served once, in order");
    assert!(t.used().iter().all(|&(_, len)| len == 8));
}

#[test]
fn a_driver_that_keeps_refilling_cannot_hold_the_event_loop() {
    // The handler plays the guest on another vCPU: each chain served is replaced at once.
    // Without a budget one call would serve all 100,000 of them.
    let mem = guest_mem();
    let t = RefCell::new(TestQueue::new(&mem, 16));
    for i in 0..16 {
        t.borrow_mut().add_chain(&one_buffer(i));
    }
    let mut q = t.borrow().dma_queue();
    let (irq, _irqfd) = test_interrupt();
    let mut refills = 0u32;
    let mut refill = |_: &DmaQueue, _: &Chain| {
        if refills < 100_000 {
            refills += 1;
            t.borrow_mut()
                .add_chain(&one_buffer(u64::from(refills % 16)));
        }
        8
    };
    let r = drain_queue(&mut q, &irq, QUEUE_BUDGET, &mut refill).unwrap();
    assert_eq!(r, QueueState::MoreWork);
    assert_eq!(usize::from(t.borrow().used_idx()), QUEUE_BUDGET);
    // The next call picks up where this one stopped.
    let r = drain_queue(&mut q, &irq, QUEUE_BUDGET, &mut refill).unwrap();
    assert_eq!(r, QueueState::MoreWork);
    assert_eq!(usize::from(t.borrow().used_idx()), 2 * QUEUE_BUDGET);
}

#[test]
fn malformed_chains_count_against_the_budget() {
    let mem = guest_mem();
    let mut t = TestQueue::new(&mem, 16);
    for i in 0..6 {
        let head = t.add_chain(&one_buffer(i));
        // Each descriptor says "next" and points at itself: a loop.
        t.set_desc(head, 0x10_0000, 8, 1, head);
    }
    let mut q = t.dma_queue();
    let (irq, _irqfd) = test_interrupt();
    let r = drain_queue(&mut q, &irq, 4, |_, _| {
        unreachable!("no chain is well formed")
    });
    assert_eq!(r.unwrap(), QueueState::MoreWork);
    assert_eq!(t.used().len(), 4);
    let r = drain_queue(&mut q, &irq, 4, |_, _| 0);
    assert_eq!(r.unwrap(), QueueState::Drained);
    assert_eq!(t.used(), (0..6).map(|h| (h, 0)).collect::<Vec<_>>());
}
