/* Fibers: user code (worker programs, functions, blocking waits) runs on
 * ucontext fibers with bounded, guarded stacks; the scheduler switches them
 * only at waits, so every run interleaves them the same way. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "internal.h"

#if defined(__SANITIZE_ADDRESS__)
#define SIM_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define SIM_ASAN 1
#endif
#endif

#ifdef SIM_ASAN
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#endif

#define NO_SLOT UINT32_MAX

/* Fast switches. swapcontext saves and restores the signal mask with a
 * system call on every switch, which dominated the simulator's profile.
 * On x86-64 and aarch64 (ELF) a fiber is entered the first time through
 * makecontext/swapcontext, and every later switch only saves the
 * callee-saved registers on the stack being left and swaps stack
 * pointers. The signal mask and the floating-point control words never
 * change inside the simulator, so nothing else needs saving. Other
 * targets switch with swapcontext throughout. */
#if defined(__ELF__) && (defined(__x86_64__) || defined(__aarch64__))
#define SIM_FAST_SWITCH 1

/* Saves the callee-saved registers on the current stack, stores the stack
 * pointer in *save_sp, then continues on to_sp, which one of these two
 * functions saved. */
void sim_ctx_swap(void **save_sp, void *to_sp);
/* Saves like sim_ctx_swap, then calls then(arg) further down the same
 * stack; then must not return. A later sim_ctx_swap to *save_sp returns
 * from this call. */
void sim_ctx_park_then(void **save_sp, void (*then)(void *), void *arg);

#if defined(__x86_64__)
__asm__(".text\n"
        ".globl sim_ctx_swap\n"
        ".hidden sim_ctx_swap\n"
        ".type sim_ctx_swap,@function\n"
        ".p2align 4\n"
        "sim_ctx_swap:\n"
        "  pushq %rbp\n"
        "  pushq %rbx\n"
        "  pushq %r12\n"
        "  pushq %r13\n"
        "  pushq %r14\n"
        "  pushq %r15\n"
        "  movq %rsp, (%rdi)\n"
        "  movq %rsi, %rsp\n"
        "  popq %r15\n"
        "  popq %r14\n"
        "  popq %r13\n"
        "  popq %r12\n"
        "  popq %rbx\n"
        "  popq %rbp\n"
        "  ret\n"
        ".size sim_ctx_swap, .-sim_ctx_swap\n"
        ".globl sim_ctx_park_then\n"
        ".hidden sim_ctx_park_then\n"
        ".type sim_ctx_park_then,@function\n"
        ".p2align 4\n"
        "sim_ctx_park_then:\n"
        "  pushq %rbp\n"
        "  pushq %rbx\n"
        "  pushq %r12\n"
        "  pushq %r13\n"
        "  pushq %r14\n"
        "  pushq %r15\n"
        "  movq %rsp, (%rdi)\n"
        "  movq %rdx, %rdi\n"
        "  subq $8, %rsp\n" /* 16-byte alignment at the call */
        "  call *%rsi\n"
        "  ud2\n"
        ".size sim_ctx_park_then, .-sim_ctx_park_then\n");
#else
#define SIM_SAVE_REGS                                                          \
  "  sub sp, sp, #160\n"                                                       \
  "  stp x19, x20, [sp, #0]\n"                                                 \
  "  stp x21, x22, [sp, #16]\n"                                                \
  "  stp x23, x24, [sp, #32]\n"                                                \
  "  stp x25, x26, [sp, #48]\n"                                                \
  "  stp x27, x28, [sp, #64]\n"                                                \
  "  stp x29, x30, [sp, #80]\n"                                                \
  "  stp d8, d9, [sp, #96]\n"                                                  \
  "  stp d10, d11, [sp, #112]\n"                                               \
  "  stp d12, d13, [sp, #128]\n"                                               \
  "  stp d14, d15, [sp, #144]\n"                                               \
  "  mov x9, sp\n"                                                             \
  "  str x9, [x0]\n"
__asm__(".text\n"
        ".globl sim_ctx_swap\n"
        ".hidden sim_ctx_swap\n"
        ".type sim_ctx_swap,%function\n"
        ".p2align 4\n"
        "sim_ctx_swap:\n" SIM_SAVE_REGS "  mov sp, x1\n"
        "  ldp x19, x20, [sp, #0]\n"
        "  ldp x21, x22, [sp, #16]\n"
        "  ldp x23, x24, [sp, #32]\n"
        "  ldp x25, x26, [sp, #48]\n"
        "  ldp x27, x28, [sp, #64]\n"
        "  ldp x29, x30, [sp, #80]\n"
        "  ldp d8, d9, [sp, #96]\n"
        "  ldp d10, d11, [sp, #112]\n"
        "  ldp d12, d13, [sp, #128]\n"
        "  ldp d14, d15, [sp, #144]\n"
        "  add sp, sp, #160\n"
        "  ret\n"
        ".size sim_ctx_swap, .-sim_ctx_swap\n"
        ".globl sim_ctx_park_then\n"
        ".hidden sim_ctx_park_then\n"
        ".type sim_ctx_park_then,%function\n"
        ".p2align 4\n"
        "sim_ctx_park_then:\n" SIM_SAVE_REGS "  mov x0, x2\n"
        "  blr x1\n"
        "  brk #0\n"
        ".size sim_ctx_park_then, .-sim_ctx_park_then\n");
#undef SIM_SAVE_REGS
#endif
#endif

sim_fiber *sim_fiber_at(sim *s, uint32_t slot) {
  return slot < s->nfibers ? s->fibers[slot] : NULL;
}

/* The running fiber f switches back to the scheduler; returns when the
 * scheduler resumes it. */
static void to_sched(sim *s, sim_fiber *f) {
#ifdef SIM_ASAN
  __sanitizer_start_switch_fiber(&f->fake_stack, s->sched_bottom,
                                 s->sched_size);
#endif
#ifdef SIM_FAST_SWITCH
  sim_ctx_swap(&f->sp, s->sched_sp);
#else
  swapcontext(&f->uc, &s->sched_uc);
#endif
#ifdef SIM_ASAN
  __sanitizer_finish_switch_fiber(f->fake_stack, &s->sched_bottom,
                                  &s->sched_size);
#endif
}

#ifdef SIM_FAST_SWITCH
/* The end of a fiber's first entry: back to the scheduler's swapcontext. */
static void boot_return(void *arg) {
  sim *s = arg;
  setcontext(&s->sched_uc);
  abort();
}
#endif

/* A fiber's first frame, for as long as its stack lives: runs one fn after
 * another, switching back to the scheduler after each. A fiber abandoned
 * mid-run (its node crashed) starts over here through makecontext. */
static void fiber_main(void) {
  sim *s = sim_current;
  sim_fiber *f = s->cur;
#ifdef SIM_ASAN
  __sanitizer_finish_switch_fiber(NULL, &s->sched_bottom, &s->sched_size);
#endif
#ifdef SIM_FAST_SWITCH
  /* Park at once; sim_fiber_resume switches in with sim_ctx_swap. */
#ifdef SIM_ASAN
  __sanitizer_start_switch_fiber(&f->fake_stack, s->sched_bottom,
                                 s->sched_size);
#endif
  sim_ctx_park_then(&f->sp, boot_return, s);
#ifdef SIM_ASAN
  __sanitizer_finish_switch_fiber(f->fake_stack, &s->sched_bottom,
                                  &s->sched_size);
#endif
#endif
  for (;;) {
    f->fn(f->arg);
    f->state = F_DONE;
    to_sched(s, f);
  }
}

/* getcontext returns twice in principle; keeping it out of fiber_new_slot
 * keeps that function's locals safe from -Wclobbered. */
static __attribute__((noinline)) int init_context(ucontext_t *uc) {
  return getcontext(uc);
}

static sim_fiber *fiber_new_slot(sim *s) {
  if (s->nfibers >= SIM_MAX_FIBERS)
    return NULL;
  if ((s->nfibers & (s->nfibers - 1)) == 0) {
    size_t cap = s->nfibers ? (size_t)s->nfibers * 2 : 16;
    sim_fiber **v = realloc(s->fibers, cap * sizeof *v);
    if (!v)
      return NULL;
    s->fibers = v;
  }
  sim_fiber *f = calloc(1, sizeof *f);
  if (!f)
    return NULL;
  size_t page = (size_t)sysconf(_SC_PAGESIZE);
  f->map = mmap(NULL, SIM_STACK_BYTES + page, PROT_READ | PROT_WRITE,
                MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (f->map == MAP_FAILED) {
    free(f);
    return NULL;
  }
  /* The guard page below the stack turns an overflow into a fault. */
  mprotect(f->map, page, PROT_NONE);
  f->stack = (char *)f->map + page;
  f->stack_size = SIM_STACK_BYTES;
  f->slot = s->nfibers;
  f->next_free = NO_SLOT;
  if (init_context(&f->uc)) {
    munmap(f->map, SIM_STACK_BYTES + page);
    free(f);
    return NULL;
  }
  s->fibers[s->nfibers++] = f;
  return f;
}

int sim_fiber_spawn(sim *s, int16_t node, void (*fn)(void *), void *arg,
                    sim_fiber **out) {
  sim_fiber *f = NULL;
  if (s->free_fiber != NO_SLOT && s->nfibers > 0) {
    f = s->fibers[s->free_fiber];
    s->free_fiber = f->next_free;
  } else {
    f = fiber_new_slot(s);
  }
  if (!f) {
    sim_violation(s, "fiber limit reached (%u fibers alive)", s->live_fibers);
    return DRPC_ETOOBIG;
  }
  /* New, or abandoned mid-run: enter fiber_main afresh. Otherwise the
   * fiber sits in fiber_main's loop, ready for the next fn. */
  bool fresh = f->dirty || !f->started;
#ifdef SIM_ASAN
  if (f->dirty)
    ASAN_UNPOISON_MEMORY_REGION(f->stack, f->stack_size);
#endif
  f->dirty = false;
  f->node = node;
  f->state = F_PARKED;
  f->fn = fn;
  f->arg = arg;
  f->is_job = f->is_main = false;
  f->waiter = NULL;
  f->signaled = false;
  f->next_free = NO_SLOT;
  memset(f->streams, 0, sizeof f->streams);
  if (fresh) {
    f->fake_stack = NULL;
    if (init_context(&f->uc)) {
      sim_violation(s, "getcontext failed");
      return DRPC_ETOOBIG;
    }
    f->uc.uc_stack.ss_sp = f->stack;
    f->uc.uc_stack.ss_size = f->stack_size;
    f->uc.uc_link = NULL;
    makecontext(&f->uc, fiber_main, 0);
    f->started = false;
  }
  s->live_fibers++;
  *out = f;
  return 0;
}

static void fiber_release(sim *s, sim_fiber *f) {
  f->state = F_FREE;
  f->wait_seq++; /* any event still naming the old wait is stale */
  f->next_free = s->free_fiber;
  s->free_fiber = f->slot;
  s->live_fibers--;
}

void sim_fiber_resume(sim *s, sim_fiber *f) {
  s->cur = f;
  f->state = F_RUNNING;
  /* The fiber's own current streams (see sim_fiber.streams) in, the
   * scheduler's (the defaults) out. */
  drpc_stream_swap_currents(f->streams);
#ifdef SIM_ASAN
  void *fake = NULL;
#endif
#ifdef SIM_FAST_SWITCH
  if (!f->started) {
    /* First entry: fiber_main parks at once (boot_return). */
    f->started = true;
#ifdef SIM_ASAN
    __sanitizer_start_switch_fiber(&fake, f->stack, f->stack_size);
#endif
    swapcontext(&s->sched_uc, &f->uc);
#ifdef SIM_ASAN
    __sanitizer_finish_switch_fiber(fake, NULL, NULL);
#endif
  }
#ifdef SIM_ASAN
  __sanitizer_start_switch_fiber(&fake, f->stack, f->stack_size);
#endif
  sim_ctx_swap(&s->sched_sp, f->sp);
#else
  f->started = true;
#ifdef SIM_ASAN
  __sanitizer_start_switch_fiber(&fake, f->stack, f->stack_size);
#endif
  swapcontext(&s->sched_uc, &f->uc);
#endif
#ifdef SIM_ASAN
  __sanitizer_finish_switch_fiber(fake, NULL, NULL);
#endif
  s->cur = NULL;
  /* Kept for its next resume; the scheduler's come back. */
  drpc_stream_swap_currents(f->streams);
  if (f->state == F_DONE) {
    bool job = f->is_job, main = f->is_main;
    int16_t node = f->node;
    fiber_release(s, f);
    if (job && node >= 0)
      sim_node_job_done(s, &s->nodes[node]);
    else if (main && node >= 0)
      sim_node_maybe_free(s, &s->nodes[node]);
  }
}

void sim_fiber_park(sim *s) {
  sim_fiber *f = s->cur;
  f->state = F_PARKED;
  to_sched(s, f);
}

void sim_fiber_sleep(sim *s, uint64_t t) {
  sim_fiber *f = s->cur;
  f->wait_seq++;
  f->signaled = false;
  sim_push(s, EV_WAKE, f->node, t, f->slot, f->wait_seq, NULL, 0);
  sim_fiber_park(s);
}

void sim_fiber_wake_event(sim *s, uint32_t slot, uint64_t seq) {
  sim_fiber *f = sim_fiber_at(s, slot);
  if (!f || f->state != F_PARKED || f->wait_seq != seq)
    return; /* stale: the fiber moved on, finished or was killed */
  sim_fiber_resume(s, f);
}

static void waiter_unlink(sim_waiter *w) {
  sim_waitlist *l = w->list;
  if (!l)
    return;
  if (w->prev)
    w->prev->next = w->next;
  else
    l->head = w->next;
  if (w->next)
    w->next->prev = w->prev;
  else
    l->tail = w->prev;
  w->prev = w->next = NULL;
  w->list = NULL;
}

void sim_fiber_kill_node(sim *s, int16_t node) {
  /* Slot order is creation order, not pointer order: deterministic. */
  for (uint32_t i = 0; i < s->nfibers; i++) {
    sim_fiber *f = s->fibers[i];
    if (f->node != node || f->state != F_PARKED)
      continue;
    if (f->waiter)
      waiter_unlink(f->waiter);
    f->waiter = NULL;
    /* Its frames never return; what they own is abandoned with them. */
    f->dirty = true;
    s->res->abandoned = true;
    fiber_release(s, f);
  }
}

void sim_fiber_free_all(sim *s) {
  size_t page = (size_t)sysconf(_SC_PAGESIZE);
  for (uint32_t i = 0; i < s->nfibers; i++) {
    sim_fiber *f = s->fibers[i];
    if (f->state == F_PARKED) {
      if (f->waiter)
        waiter_unlink(f->waiter);
      s->res->abandoned = true;
    }
#ifdef SIM_ASAN
    ASAN_UNPOISON_MEMORY_REGION(f->stack, f->stack_size);
#endif
    munmap(f->map, SIM_STACK_BYTES + page);
    free(f);
  }
  free(s->fibers);
  s->fibers = NULL;
  s->nfibers = 0;
  s->free_fiber = NO_SLOT;
}

/* ---- sync primitives over drpc_sync ----------------------------------- */

#define WL_MAGIC 0x73696d77616974ull /* "simwait" */

_Static_assert(sizeof(sim_waitlist) <= sizeof(drpc_sync),
               "a wait list must fit in a drpc_sync");

static sim_waitlist *wl_of(drpc_sync *sy) {
  return (sim_waitlist *)(void *)sy->opaque;
}

void sim_sync_init(void *ctx, drpc_sync *sy) {
  (void)ctx;
  memset(sy, 0, sizeof *sy);
  wl_of(sy)->magic = WL_MAGIC;
}

void sim_sync_destroy(void *ctx, drpc_sync *sy) {
  sim_node *n = ctx;
  sim_waitlist *l = wl_of(sy);
  if (l->head)
    sim_violation(n->s, "a drpc_sync was destroyed with fibers parked on it");
  l->magic = 0;
}

/* One OS thread and switches only at waits: locking has nothing to do. */
void sim_sync_nop(void *ctx, drpc_sync *sy) {
  (void)ctx;
  (void)sy;
}

bool sim_sync_wait(void *ctx, drpc_sync *sy, uint64_t deadline) {
  sim_node *n = ctx;
  sim *s = n->s;
  sim_fiber *f = s->cur;
  if (!f) {
    /* An event handler may not block: the whole simulation would stop. */
    sim_violation(s, "sync_wait called outside a fiber (node %d)", n->index);
    return false;
  }
  sim_waitlist *l = wl_of(sy);
  if (l->magic != WL_MAGIC) {
    sim_violation(s, "sync_wait on a drpc_sync that was never initialised");
    return false;
  }
  sim_waiter w = {.prev = l->tail, .next = NULL, .list = l, .fiber = f->slot};
  if (l->tail)
    l->tail->next = &w;
  else
    l->head = &w;
  l->tail = &w;
  f->wait_seq++;
  f->signaled = false;
  f->waiter = &w;
  if (deadline)
    sim_push(s, EV_WAKE, f->node, sim_node_to_global(n, deadline), f->slot,
             f->wait_seq, NULL, 0);
  sim_fiber_park(s);
  f->waiter = NULL;
  waiter_unlink(&w); /* still listed when the deadline woke it */
  return f->signaled;
}

void sim_sync_broadcast(void *ctx, drpc_sync *sy) {
  sim_node *n = ctx;
  sim *s = n->s;
  sim_waitlist *l = wl_of(sy);
  /* Wake in the order they parked, each through an event at now. */
  while (l->head) {
    sim_waiter *w = l->head;
    waiter_unlink(w);
    sim_fiber *f = sim_fiber_at(s, w->fiber);
    f->signaled = true;
    sim_push(s, EV_WAKE, f->node, s->now, f->slot, f->wait_seq, NULL, 0);
  }
}
