/*
 * The liburcu bp (bulletproof) flavor, as the nmi-rcu benchmarks call it.
 *
 * _LGPL_SOURCE makes urcu_bp_read_lock() and urcu_bp_read_unlock()
 * inline functions, so the read-side loop below costs what it costs in a C
 * program that uses liburcu the recommended way. The handler is a Rust
 * function, reached through the same published pointer as every other
 * contender's loop.
 */
#define _LGPL_SOURCE
#include <stdint.h>
#include <urcu/urcu-bp.h>

typedef uint64_t (*nrb_handler_fn)(uint64_t);

void nrb_bp_register_thread(void)
{
	urcu_bp_register_thread();
}

void nrb_bp_unregister_thread(void)
{
	urcu_bp_unregister_thread();
}

void nrb_bp_synchronize(void)
{
	urcu_bp_synchronize_rcu();
}

/*
 * Runs `iterations` read-side critical sections. Each one dereferences the
 * handler pointer published in *slot and calls it with the iteration number.
 * Returns the sum of the results, so the calls cannot be optimized away.
 */
uint64_t nrb_bp_read_loop(void *const *slot, uint64_t iterations)
{
	uint64_t sum = 0;

	for (uint64_t i = 0; i < iterations; i++) {
		urcu_bp_read_lock();
		nrb_handler_fn handler = (nrb_handler_fn)rcu_dereference(*slot);
		sum += handler(i);
		urcu_bp_read_unlock();
	}
	return sum;
}
