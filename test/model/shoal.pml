/*
 * shoal.pml -- a Promela model of the Shoal member protocol (docs/protocol.md), checked by
 * spin through scripts/model_check.sh (make model, model-full, model-mutants). See
 * test/model/README.md for the configurations and what each assertion checks.
 *
 * What is modelled: three nodes (0, 1, 2), one pool, ONE key K, one member per node, a
 * caller per node racing to resolve K (shoal_arbiter:resolve/4), late and non-transitive
 * joins (hello / hello_ack / probes), views (view / view_ack, the fence), home-side claims
 * (shoal_member:arbitrate/3, the `sent' callers), host-side spawns (on_spawn ->
 * place_here/5), deferred answers (the worker answers the callers that asked its member
 * once its init/2 ran; the member answers if it dies first; the home is answered at
 * once), the asks table (a caller's own member answers `retry' to a request to a peer it
 * lost, after the purge), replication (up / down, versions, tombs, newer-wins; the batch
 * timer), sync on becoming peers, the caller's read-your-writes put, a node dying
 * (member, workers and callers go; peers get 'DOWN'), a worker stopping (before or after
 * its init ack), and a migration (moving, takeover inside the target's gate,
 * register(over), relay of the replaced entry, forwarding, take-back on failure).
 *
 * Abstractions (what each leaves out):
 *  - One key: no interference between keys (none exists in the protocol: every decision is
 *    per key). ensure_started_async (claim_async / spawn_async) is not modelled.
 *  - Batching: a table event waits in the member's buffer (pend) until a step of its own
 *    (the 1 ms timer, a full batch) or a fence sends it; a batch is a sequence of single-key
 *    ops on one channel, so per-pair FIFO order is all that matters.
 *  - Versions are small integers lc*4+node (a Lamport clock per node, raised past every
 *    version the node applies, tie broken by node). The HLC's wall-clock part is left out:
 *    it only adds upward jumps, and the model lets clocks of different nodes drift apart
 *    arbitrarily, which is the worst case of clock skew.
 *  - Pids are small integers (worker ids 1..MAXW, never reused); caller refs (aliases) are
 *    a per-caller counter.
 *  - Channels: one FIFO channel per ordered pair of processes that talk (member->member,
 *    caller->member, mover<->member) and one into each caller: Erlang orders messages
 *    between two processes only. A member's receive picks any non-empty incoming channel.
 *    Mailboxes are unbounded in Erlang; here every channel has a bound and every send
 *    asserts it is not full, so a bound that is too small shows up as an assertion, never
 *    as a silent block.
 *  - A node dying: its outgoing member channels are either delivered (all of what is in
 *    flight) or lost (all of it), then the receiver gets 'DOWN' after them. With the
 *    interleavings this covers every prefix that was received before the death, but not a
 *    prefix received early and a suffix received late. Nodes never come back.
 *  - No partitions (no cut links, no node that starts its pool before it connects): the
 *    model checks the guarantees that hold outside a partition. Conflict resolution is not
 *    modelled; instead, a replica newer than a live local worker (which is what starts a
 *    conflict) is an assertion failure.
 *  - No timeouts: callers, homes and movers wait for an answer or a 'DOWN'. Tomb sweeping
 *    (TombTTL) is left out (tombs live forever here).
 *  - Workers are data, not processes: calls and casts to them are not modelled (the "nothing
 *    lost in motion" guarantee is not checked here); a worker's init/2 always succeeds, but
 *    a worker may stop before its deferred answer is sent (then its member answers
 *    {error, Reason}, as for a failed init/2). A caller "returns" when it has its answer
 *    (its read-your-writes put done); the wait for an init ack that follows is left out.
 *  - Placement: the home is a fixed rendezvous order (node 2 > node 0 > node 1, so a join of
 *    node 2 moves the home, and so does its leave); the host is any member of the view
 *    (nondeterministic), which covers every window configuration.
 *  - Atomicity: a member handles one message (or one internal event) as one atomic step,
 *    like a gen_server; a table operation is atomic (one NIF call). A member waiting in its
 *    fence (or, losing a peer, for the arbitrations inside its gate) is the one place where
 *    it blocks inside a step. So no caller runs between a member's gate check and what the
 *    same step does next: the window that peer_left/3 closes its gate for in the code (a
 *    caller entering between the purge and propose/1's fence) does not exist here.
 *
 * The fixes of the defects this model found (test/model/README.md) are switched by FIX_*
 * macros: all of them (F0-F7) are in the code on lead and on by default (-DNO_FIX_x turns
 * one off: the mutants). -DSPEC_DRAFT drops them all. -DDEAD_WINNER (off by default; it
 * was used to find F8 (b) past F8 (a)) models the end of a conflict whose winner is dead as
 * one step instead of failing.
 */

#define N      3          /* nodes */
#define NC     3          /* callers: caller c runs on node c */
#define MAXW   6          /* worker ids 1..MAXW */
#ifndef CALLERS
#define CALLERS 7         /* bitmask of the callers that run */
#endif
#define CSTART(cc) cstart[cc] = ((cmask >> (cc)) & 1)
/* Backing off. A caller that got `retry' tries again at once up to RETRY_BUDGET times, then
 * waits for progress (KICK: a gate opened, a view was proposed, a node died, a table entry
 * changed other than by a claim or its release) since it sent its request. This abstracts
 * shoal_arbiter's backoff: it prunes retries that would meet the same state again (they
 * only make the state space blow up), never ones that could meet a different state. */
#ifndef RETRY_BUDGET
#define RETRY_BUDGET 1
#endif
#define KICK kick = cwait;
#ifndef QM
#define QM     5          /* capacity of a member->member channel */
#endif
/* channel index of the ordered pair (f, t), f != t */
#define CH(f, t) ((f) * (N - 1) + (t) - ((t) > (f)))

/* The fixes of the defects found with this model (test/model/README.md). Those the code on
 * lead has are on; -DNO_FIX_x turns one off (a mutant), -DSPEC_DRAFT all of them. */
#ifndef SPEC_DRAFT
#ifndef NO_FIX_PROBE
#define FIX_PROBE         /* F0: a starting member is not active while a greeting is open */
#endif
#ifndef NO_FIX_CLAIM_MIN
#define FIX_CLAIM_MIN     /* F1: a claim keeps the tomb's version; spawn carries it (Min) */
#endif
#ifndef NO_FIX_TAKEOVER_GATE
#define FIX_TAKEOVER_GATE /* F2: a takeover registers inside an active target's gate */
#endif
#ifndef NO_FIX_SPAWN_CLOCK
#define FIX_SPAWN_CLOCK   /* F3: spawn carries the home's clock; the host's passes it */
#endif
#ifndef NO_FIX_PEER_ONLY
#define FIX_PEER_ONLY     /* F4: a table stores replicas of its member's peers only */
#endif
#ifndef NO_FIX_ASKS
#define FIX_ASKS          /* F5: a caller learns that the member it asked is lost from its own
                           * member, after that member dropped the peer and purged its
                           * replicas (shoal_view:ask/3, fail_asks/2); -DNO_FIX_ASKS: the
                           * caller watches the remote member itself (the draft) */
#endif
#ifndef NO_FIX_FAIL_VSN
#define FIX_FAIL_VSN      /* F6: an {error, R} answer for a registered worker carries its
                           * version ({failed, Vsn}: shoal_worker_proc:ack/4,
                           * shoal_segment:answer_owed/5) and the caller's clock passes it
                           * (shoal_arbiter:await_claimed/4: shoal_registry:observe/1) before
                           * the claimer releases its claim (spawn_on/7) */
#endif
#ifndef NO_FIX_RELAY_DOWN
#define FIX_RELAY_DOWN    /* F7a: a local entry replaced in place is relayed as the `up' of
                           * its successor and the `down' of what this node stopped owning,
                           * one `moved' op (shoal_member:op/2, apply_op/5: the receiver
                           * applies the `up' if it would, else the `down') */
#endif
#ifndef NO_FIX_REFRESH
#define FIX_REFRESH       /* F7b: a member that loses a peer closes its gate and waits for the
                           * arbitrations inside before the purge, and asks its other peers
                           * {refresh, node(), Keys} for the keys the purged replicas held;
                           * each answers, after its pending ops, with an `up' of what it owns
                           * of them (shoal_member:peer_left/3, ask_refresh/2, on_refresh/3) */
#endif
#ifndef NO_FIX_KEEP_MOVING
#define FIX_KEEP_MOVING   /* F8a: a replicated `up' (or sync, or a caller's put) does not
                           * replace a moving local entry: only the move's outcome does (the
                           * mover's put_successor after `taken'); put_remote/6 answers
                           * `stale'. The model notes the newest such replica (tdef) and
                           * asserts at a take-back that it is stale indeed: a conflict it
                           * would have started could never make the worker step aside */
#endif
#ifndef NO_FIX_TAKEBACK_WAIT
#define FIX_TAKEBACK_WAIT /* F8b: a move whose target went down is taken back only once the
                           * source's member has dropped the target's member (so it applied,
                           * and its clock observed, all that member sent it):
                           * shoal_mover:await_dropped/3 */
#endif
#ifndef NO_FIX_TAKEBACK_VSN
#define FIX_TAKEBACK_VSN  /* F8c: a take-back over the worker's own moving entry gives it a
                           * fresh version (above everything the node's clock has seen) and
                           * announces it (registry.c register_fn, REGISTRY_OWN) */
#endif
#endif

/* entry states of K in a node's table */
#define ABSENT  0
#define CLAIMED 1
#define LOCAL   2
#define REMOTE  3
#define TOMB    4

#define MEMBER  3         /* claimer id of the member itself (callers are 0..NC-1) */
#define NONE    255

/* results */
#define OK      1
#define RETRY   2
#define FAIL    3         /* {error, Reason}: a worker that died before its init ack */
#define QRETRY  4         /* `retry' to a queued caller: its request never got an attempt */
#define LOST    5         /* `retry' from the caller's own member: the peer it asked is lost
                           * (shoal_view:fail_asks/2) */

#define true 1
#define BIT(i)   (1 << (i))
#ifdef FIX_CLAIM_MIN
/* F1: a replica at the host that is not newer than the home's Min is dead */
#define STALE_AT_HOST(m, mn) (tvsn[m] <= (mn))
#else
#define STALE_AT_HOST(m, mn) 0
#endif
#ifdef FIX_PEER_ONLY
/* F4: the table takes replicas only of its member's peers (the purge of a node that left
 * and its removal from that set are one operation) */
#define NOT_PEER(m, o) (!(peers[m] & BIT(o)))
#else
#define NOT_PEER(m, o) 0
#endif
#ifdef FIX_TAKEOVER_GATE
#define TAKEOVER_OK(m) gate[m]     /* F2: takeovers wait until the target is active */
#else
#define TAKEOVER_OK(m) 1
#endif
#ifdef FIX_PROBE
#define PROBES_DONE(m) (pg[m] == 0)
#else
#define PROBES_DONE(m) 1
#endif
/* home of K in view V: highest rendezvous score, fixed order 2 > 0 > 1 */
#define HOME(V)  (((V) & 4) -> 2 : (((V) & 1) -> 0 : 1))

mtype = { HELLO, HELLO_ACK, VIEW, VIEW_ACK, UP, DOWN, MOVED, SYNC, CLAIM, SPAWN, SPAWNED,
          REPLY, TAKEOVER, TAKEN, MDOWN, REFRESH };

/* ---- the configuration (see init) --------------------------------------------------------- */
byte cfg;                 /* its events (E_x bits) */
byte cmask;               /* the callers that run (CALLERS) */

/* ---- members ---------------------------------------------------------------------------- */
bool nup[N];              /* member running (node up, pool started) */
byte peers[N];            /* bitmask of peers */
byte P[N];                /* proposed view (bitmask, self included) */
byte seq[N];              /* Seq of the current proposal */
byte acked[N];            /* peers that acknowledged the current Seq */
byte pg[N];               /* probes: greeted nodes not heard from yet */
bool gate[N];             /* the view gate: open = active in P */
byte inflight[N];         /* arbitrations between their gate check and their table write */
byte lvp[N*N];            /* lvp[n*N+j]: the last view member j proposed to n ... */
byte lvs[N*N];            /* ... and its Seq */
byte lc[N];               /* the node's clock */
byte hsp[N];              /* home: host of our outstanding spawn (NONE) ... */
byte hcal[N];             /* ... the caller it was for ... */
byte href[N];             /* ... and that caller's ref */
byte qwait[N];            /* home: callers queued on K (bitmask) ... */
byte qref[N*NC];          /* ... with their refs */

/* ---- tables: the entry of K on each node ------------------------------------------------ */
byte tst[N];              /* ABSENT | CLAIMED | LOCAL | REMOTE | TOMB */
byte tnode[N];            /* owner node (LOCAL, REMOTE) */
byte tpid[N];             /* worker (LOCAL, REMOTE) */
byte tvsn[N];             /* version (LOCAL, REMOTE, TOMB) */
bool tmov[N];             /* LOCAL: moving */
byte tdef[N];             /* LOCAL moving: the newest replica refused while it moved (F8a: a
                           * conflict it would start must be stale by the move's end) */
bool pr_outcome;          /* set around the mover's put_successor (the move's outcome) */
byte tclm[N];             /* CLAIMED: claimer (caller id or MEMBER) */

/* ---- workers (ground truth) ------------------------------------------------------------- */
bool w_alive[MAXW+1];
bool w_serving[MAXW+1];   /* alive and handling messages itself (not moving/forwarding) */
byte w_node[MAXW+1];
byte w_vsn[MAXW+1];
byte w_fwd[MAXW+1];       /* the successor it forwards to (kept after it exits) */
byte next_w;

/* ---- callers ---------------------------------------------------------------------------- */
bool cstart[NC];
bool cdone[NC];
/* Ghost: node n purged (its owner left) a replica of a worker that had already moved on;
 * until the successor's `up' arrives n's table names nothing. The one window in which the
 * model does not claim read-your-writes (README.md; it takes a migration and a node death,
 * MOVEKILL; with F7b the window ends when the refresh's answer, or the successor's `up',
 * arrives). */
bool rywgap[N];
byte cwait;               /* callers (bits) with a request out or backing off */
byte kick;                /* those of them that saw progress since their last request */
byte ret_pid[NC];
byte ret_vsn[NC];
/* The asks table (shoal_view:ask/3): the node whose member caller c asked (NONE) and the
 * request's ref; the caller's own member answers it `retry' when it loses that peer. */
byte askn[NC];
byte askr[NC];
/* Deferred answers (shoal_member:started/4 with `defer'): the worker dkw[c] (registered at
 * dkv[c]) answers caller c's request dkr[c] itself once its init/2 ran; if it dies first
 * its member answers the exit reason; if its node dies, nobody answers (the caller's own
 * member fails the ask). 0: none. */
byte dkw[NC];
byte dkr[NC];
byte dkv[NC];

/* ---- channels --------------------------------------------------------------------------- */
chan m2m[N*(N-1)] = [QM] of { mtype, byte, byte, byte, byte };  /* CH(from, to) */
chan c2m[NC*(N-1)] = [1] of { mtype, byte, byte, byte, byte };   /* CH(caller, member) */
chan rep[NC]   = [3]  of { mtype, byte, byte, byte, byte, byte };  /* to caller */
chan mv2m[N]   = [1]  of { mtype, byte, byte, byte, byte };  /* mover -> member */
chan m2mv      = [1]  of { mtype, byte, byte, byte, byte };  /* member -> mover */
/* The table's listener events (registrations, removals, replacements) that the member has
 * not yet sent to its peers: the member's mailbox of '$shoal_up' / '$shoal_down' /
 * '$shoal_replaced'. */
chan pend[N]   = [4]  of { mtype, byte, byte, byte, byte };

/* ======================================================================================== */
/* Helpers                                                                                  */
/* ======================================================================================== */

/* member `from' sends to member `to' (lost if `to' is not running) */
inline msend(ms_from, ms_to, ms_t, ms_a, ms_b, ms_c, ms_d) {
  if
  :: nup[ms_to] -> assert(nfull(m2m[CH(ms_from, ms_to)])); m2m[CH(ms_from, ms_to)]!ms_t,ms_a,ms_b,ms_c,ms_d;
     printf("MSG member %d -> member %d: %e %d %d %d %d\n", ms_from, ms_to, ms_t, ms_a, ms_b, ms_c, ms_d)
  :: else -> skip
  fi
}

/* answer caller cc (lost if its node is down): {claimed, Ref, Result} */
inline reply(rp_c, rp_r, rp_k, rp_n, rp_p, rp_v) {
  if
  :: nup[rp_c] -> assert(nfull(rep[rp_c])); rep[rp_c]!REPLY,rp_r,rp_k,rp_n,rp_p,rp_v;
     printf("MSG -> caller %d: claimed ref %d result %d (1 ok, 2 retry) node %d worker %d v%d\n", rp_c, rp_r, rp_k, rp_n, rp_p, rp_v)
  :: else -> skip
  fi
}

/* shoal_member:started/4 with `defer': worker w (registered at v) will answer caller cc's
 * request rf once its init/2 has run (deliver_ack) */
inline defer(df_c, df_r, df_w, df_v) {
  if
  :: nup[df_c] -> assert(dkw[df_c] == 0); dkw[df_c] = df_w; dkr[df_c] = df_r; dkv[df_c] = df_v
  :: else -> skip
  fi
}

/* the deferred answer to caller cc: {claimed, Ref, {ok, ..}, started} from the worker after
 * its init/2 (always succeeds here), or, if the worker died first, {error, Reason} from its
 * segment (shoal_segment:answer_owed/5, from the worker's row) */
inline deliver_ack(da_c) {
  if
  :: w_alive[dkw[da_c]] -> reply(da_c, dkr[da_c], OK, w_node[dkw[da_c]], dkw[da_c], dkv[da_c])
  :: else -> reply(da_c, dkr[da_c], FAIL, 0, 0, dkv[da_c])  /* {failed, Vsn}: see F6 */
  fi;
  dkw[da_c] = 0; dkr[da_c] = 0; dkv[da_c] = 0
}

/* a table listener event on node n, for its member to send to its peers */
inline qop(qo_n, qo_t, qo_a, qo_b, qo_c) {
  assert(nfull(pend[qo_n])); pend[qo_n]!qo_t,qo_a,qo_b,qo_c,0
}

inline seen(se_n, se_v) {
  if
  :: (se_v) / 4 > lc[se_n] -> lc[se_n] = (se_v) / 4
  :: else -> skip
  fi
}

/* the node's next version, above minv and above every version it has seen */
inline new_vsn(nv_n, nv_min, nv_out) {
  seen(nv_n, nv_min);
  lc[nv_n] = lc[nv_n] + 1;
  nv_out = lc[nv_n] * 4 + nv_n
}

inline put_entry(st_n, st_st, st_nd, st_p, st_v) {
  if
  :: st_st == LOCAL || st_st == REMOTE -> rywgap[st_n] = 0
  :: else -> skip
  fi;
  tst[st_n] = st_st; tnode[st_n] = st_nd; tpid[st_n] = st_p; tvsn[st_n] = st_v; tmov[st_n] = 0; tclm[st_n] = 0;
  tdef[st_n] = 0
}
/* every table change but a claim or its release is progress for callers that backed off */
inline set_entry(se_n, se_st, se_nd, se_p, se_v) {
  put_entry(se_n, se_st, se_nd, se_p, se_v); KICK
}

/* ======================================================================================== */
/* The table (shoal_registry / registry.c): each inline is one atomic table operation        */
/* ======================================================================================== */

/* A new worker on node n registered with a version above minv: claimed --register-->
 * local (the claim's waiters see it), or register(over) for a takeover. Sends `up'. */
inline spawn_worker(sw_n, sw_min, sw_w, sw_v) {
  new_vsn(sw_n, sw_min, sw_v);
  register_worker(sw_n, sw_w, sw_v)
}

/* a new worker on node n registered at version v (given) */
inline register_worker(sw_n, sw_w, sw_v) {
  next_w++; assert(next_w <= MAXW); sw_w = next_w;
  seen(sw_n, sw_v);
  w_alive[sw_w] = 1; w_serving[sw_w] = 1; w_node[sw_w] = sw_n; w_vsn[sw_w] = sw_v;
  set_entry(sw_n, LOCAL, sw_n, sw_w, sw_v);
  printf("EV node %d: worker %d registered, v%d\n", sw_n, sw_w, sw_v);
  qop(sw_n, UP, sw_n, sw_w, sw_v)
}

/* shoal_registry:put_remote/6: store the replica {rn, rp, rv} if it is newer. A replica
 * naming this node is refused (a member is the authority on its own workers). */
inline put_remote(pr_n, pr_rn, pr_rp, pr_rv) {
  seen(pr_n, pr_rv);
  if
  :: pr_rn == pr_n || NOT_PEER(pr_n, pr_rn) -> skip
  :: else ->
    if
    :: tst[pr_n] == ABSENT -> set_entry(pr_n, REMOTE, pr_rn, pr_rp, pr_rv)
    :: tst[pr_n] == TOMB || tst[pr_n] == REMOTE || tst[pr_n] == CLAIMED ->
       if
       :: pr_rv > tvsn[pr_n] -> set_entry(pr_n, REMOTE, pr_rn, pr_rp, pr_rv)
       :: else -> skip
       fi
#ifdef FIX_KEEP_MOVING
    :: tst[pr_n] == LOCAL && tmov[pr_n] && !pr_outcome ->
       /* F8a: `stale' (noted in tdef: see FIX_KEEP_MOVING) */
       if
       :: pr_rv > tvsn[pr_n] && pr_rv > tdef[pr_n] -> tdef[pr_n] = pr_rv
       :: else -> skip
       fi
    :: tst[pr_n] == LOCAL && tmov[pr_n] && pr_outcome ->
#else
    :: tst[pr_n] == LOCAL && tmov[pr_n] ->
#endif
       if
       :: pr_rv > tvsn[pr_n] ->            /* replaced in place ('$shoal_replaced'): op/2
                                            * relays the `up' of the successor ... */
#ifdef FIX_RELAY_DOWN
          /* F7a: ... and the `down' of the worker this node stopped owning, in one op
           * ({moved, ..}: the receiver applies the `up' if it would, else the `down') */
          assert(nfull(pend[pr_n])); pend[pr_n]!MOVED,pr_rn,pr_rp,pr_rv,tpid[pr_n];
#else
          qop(pr_n, UP, pr_rn, pr_rp, pr_rv);
#endif
          set_entry(pr_n, REMOTE, pr_rn, pr_rp, pr_rv)
       :: else -> skip
       fi
    :: tst[pr_n] == LOCAL && !tmov[pr_n] ->
       /* a newer replica of a live local worker would start a conflict: outside a
        * partition that means two workers were registered */
#ifdef DEAD_WINNER
       /* (F8, -DDEAD_WINNER: instead of failing, what the code's conflict path ends with
        * when the newer replica's worker is dead: the local worker yields, its monitor of
        * the winner fires, and it takes its key back above the winner's version; the
        * relays in between and what it forwarded meanwhile are left out) */
       if
       :: pr_rv > tvsn[pr_n] && !w_alive[pr_rp] ->
          printf("EV node %d: worker %d: conflict with the dead worker %d v%d, takes its key back\n",
                 pr_n, tpid[pr_n], pr_rp, pr_rv);
          new_vsn(pr_n, pr_rv, w_vsn[tpid[pr_n]]);
          set_entry(pr_n, LOCAL, pr_n, tpid[pr_n], w_vsn[tpid[pr_n]]);
          qop(pr_n, UP, pr_n, tpid[pr_n], tvsn[pr_n])
       :: else -> assert(pr_rv <= tvsn[pr_n])
       fi
#else
       assert(pr_rv <= tvsn[pr_n])
#endif
    fi
  fi
}

/* shoal_registry:remove_remote/4: a tomb at rv unless the entry is newer */
inline remove_remote(rr_n, rr_rn, rr_rp, rr_rv) {
  seen(rr_n, rr_rv);
  if
  :: rr_rn == rr_n -> skip
  :: else ->
    if
    :: tst[rr_n] == ABSENT -> set_entry(rr_n, TOMB, 0, 0, rr_rv)
    :: tst[rr_n] == TOMB ->
       if
       :: rr_rv > tvsn[rr_n] -> tvsn[rr_n] = rr_rv; KICK
       :: else -> skip
       fi
    :: tst[rr_n] == REMOTE ->
       if
       :: tvsn[rr_n] <= rr_rv -> set_entry(rr_n, TOMB, 0, 0, rr_rv)
       :: else -> skip
       fi
    :: tst[rr_n] == CLAIMED || tst[rr_n] == LOCAL -> skip
    fi
  fi
}

/* shoal_registry:claim/3 by `who' over an absent entry or a tomb. The claim's version
 * (tvsn) is its Min: the tomb's version it replaced (F1), 0 in the draft. */
inline claim(cl_n, cl_who) {
#ifdef FIX_CLAIM_MIN
  tst[cl_n] = CLAIMED; tnode[cl_n] = 0; tpid[cl_n] = 0; tmov[cl_n] = 0; tclm[cl_n] = cl_who
#else
  put_entry(cl_n, CLAIMED, 0, 0, 0); tclm[cl_n] = cl_who
#endif
}

/* shoal_registry:release_claim/3 by claimer `who': the entry goes back to what the claim
 * replaced (F1: its tomb; the draft: absent) */
inline release(rl_n, rl_who) {
  if
  :: tst[rl_n] == CLAIMED && tclm[rl_n] == rl_who ->
     if
     :: tvsn[rl_n] != 0 -> put_entry(rl_n, TOMB, 0, 0, tvsn[rl_n])
     :: else -> put_entry(rl_n, ABSENT, 0, 0, 0)
     fi
  :: else -> skip
  fi
}

/* a local worker exited on a live node: the owner monitor removes its entry, `down' */
inline owner_gone(og_n, og_w) {
  if
  :: tst[og_n] == LOCAL && tpid[og_n] == og_w ->
     qop(og_n, DOWN, og_n, og_w, tvsn[og_n]); set_entry(og_n, ABSENT, 0, 0, 0)
  :: else -> skip
  fi
}

/* ======================================================================================== */
/* Member (shoal_member)                                                                    */
/* ======================================================================================== */

/* maybe_activate: active (gate open) once every peer acknowledged our Seq and no probe is
 * open */
inline maybe_activate() {
  if
  :: !gate[n] && (acked[n] & peers[n]) == peers[n] && PROBES_DONE(n) -> gate[n] = 1; KICK;
     printf("EV node %d: active in view %d (seq %d)\n", n, P[n], seq[n])
  :: else -> skip
  fi
}

/* flush_events / replicate: send the table's events to every current peer ({repl, Ops}) */
inline flush() {
  do
  :: nempty(pend[n]) ->
     pend[n]?ft,fa,fb,fc,fd;
     for (k : 0 .. N-1) {
       if
       :: k != n && (peers[n] & BIT(k)) -> msend(n, k, ft, fa, fb, fc, fd)
       :: else -> skip
       fi
     }
  :: empty(pend[n]) -> break
  od;
  ft = 0; fa = 0; fb = 0; fc = 0; fd = 0
}

/* fence: close the gate, wait for the arbitrations inside, send what they registered */
inline fence() {
  gate[n] = 0;
  (inflight[n] == 0 || !nup[n]);
  flush()
}

/* propose: P = self + peers; when it changes, fence, then {view, Seq, P} to every peer and
 * view_ack to each peer whose last view equals P */
inline propose() {
  x = peers[n] | BIT(n);
  if
  :: x != P[n] ->
     fence();
     P[n] = x; seq[n] = seq[n] + 1; acked[n] = 0; KICK;
     printf("EV node %d: proposes view %d (seq %d), gate closed\n", n, P[n], seq[n]);
     for (k : 0 .. N-1) {
       if
       :: k != n && (peers[n] & BIT(k)) -> msend(n, k, VIEW, seq[n], P[n], 0, 0)
       :: else -> skip
       fi
     }
     for (k : 0 .. N-1) {
       if
       :: k != n && (peers[n] & BIT(k)) && lvp[n*N+k] == P[n] ->
          msend(n, k, VIEW_ACK, lvs[n*N+k], 0, 0, 0)
       :: else -> skip
       fi
     }
  :: else -> skip
  fi;
  x = 0;
  maybe_activate()
}

/* sync: {sync, T0, Entries, last}: every worker this node owns (moving ones included),
 * T0 being the clock when the walk starts (registrations after it get versions >= T0) */
inline send_sync(ss_to) {
  if
  :: tst[n] == LOCAL -> msend(n, ss_to, SYNC, lc[n] + 1, 1, tpid[n], tvsn[n])
  :: else -> msend(n, ss_to, SYNC, lc[n] + 1, 0, 0, 0)
  fi
}

/* add_peer (hello / hello_ack from j): close j's probe, watch it, sync, propose */
inline add_peer() {
  pg[n] = pg[n] & ~BIT(j);
  peers[n] = peers[n] | BIT(j);
  send_sync(j);
  propose()
}

/* on_view: remember j's proposal, acknowledge it if it is ours */
inline on_view() {
  if
  :: peers[n] & BIT(j) ->
     lvs[n*N+j] = a; lvp[n*N+j] = b;
     if
     :: b == P[n] -> msend(n, j, VIEW_ACK, a, 0, 0, 0)
     :: else -> skip
     fi
  :: else -> skip
  fi
}

/* on_view_ack: count an acknowledgement of our current Seq only */
inline on_view_ack() {
  if
  :: (peers[n] & BIT(j)) && a == seq[n] -> acked[n] = acked[n] | BIT(j); maybe_activate()
  :: else -> skip
  fi
}

/* apply_up / apply_down ({repl, Ops} from peer j): put_remote / remove_remote. An `up'
 * naming a node that is not a peer is dropped (a relay about a node that left). */
inline apply_up() {
  if
  :: (peers[n] & BIT(j)) && (a == j || (peers[n] & BIT(a))) -> put_remote(n, a, b, c)
  :: (peers[n] & BIT(j)) && !(a == j || (peers[n] & BIT(a))) -> seen(n, c)  /* observe/1 */
  :: else -> skip                          /* from_peer/3: not from a peer, dropped */
  fi
}
/* apply_moved ({moved, ..} from peer j, the owner of worker d (whose version is w_vsn[d],
 * fixed once it is replaced): the `up' of successor b (owner a, version c) if this node
 * would apply it (a is a peer other than itself), otherwise the `down' of d (the `down'
 * after an applied `up' never changes anything) */
inline apply_moved() {
  if
  :: (peers[n] & BIT(j)) && a != n && (peers[n] & BIT(a)) -> put_remote(n, a, b, c)
  :: (peers[n] & BIT(j)) && !(a != n && (peers[n] & BIT(a))) ->
     seen(n, c); remove_remote(n, j, d, w_vsn[d])
  :: else -> skip
  fi
}
inline apply_down() {
  if
  :: peers[n] & BIT(j) -> remove_remote(n, a, b, c)
  :: else -> skip
  fi
}

/* shoal_nif:put_synced/7 (an entry of j's sync whose walk began at T0): put_remote, except
 * that a tomb (or the tomb a claim keeps) of another node than j, below T0, does not
 * refuse it: the tomb of a partition twin that died (a version's low bits are its node). */
inline put_synced(ps_n, ps_rn, ps_rp, ps_rv, ps_t0) {
  if
  :: (tst[ps_n] == TOMB || tst[ps_n] == CLAIMED) && tvsn[ps_n] != 0 &&
     tvsn[ps_n] % 4 != ps_rn && tvsn[ps_n] / 4 < ps_t0 && tvsn[ps_n] >= ps_rv &&
     ps_rn != ps_n && !NOT_PEER(ps_n, ps_rn) ->
     seen(ps_n, ps_rv);
     printf("EV node %d: sync entry %d v%d passes the tomb v%d\n", ps_n, ps_rp, ps_rv, tvsn[ps_n]);
     set_entry(ps_n, REMOTE, ps_rn, ps_rp, ps_rv)
  :: else -> put_remote(ps_n, ps_rn, ps_rp, ps_rv)
  fi
}

/* on_sync (from j: a = T0, b = has entry, c = pid, d = vsn): apply the entry like an
 * `up' (put_synced); then drop j's replica unless the sync confirmed it or it is not older
 * than T0 */
inline on_sync() {
  if
  :: peers[n] & BIT(j) ->
     if
     :: b -> put_synced(n, j, c, d, a)
     :: else -> skip
     fi;
     if
     :: tst[n] == REMOTE && tnode[n] == j && !(b && tpid[n] == c && tvsn[n] == d) &&
        tvsn[n] / 4 < a -> set_entry(n, ABSENT, 0, 0, 0)
     :: else -> skip
     fi
  :: else -> skip
  fi
}

/* peer_left/3 ('DOWN' of j's member): close its probe; if it was a peer: (F7b) close the
 * gate and wait for the arbitrations inside, dismiss j (admit false), note the keys of
 * its replicas (keys_on/2) and purge them, fail the asks, give up the spawn we asked it
 * for, (F7b) ask the other peers to refresh those keys, and re-propose */
inline peer_left() {
  pg[n] = pg[n] & ~BIT(j);
  if
  :: peers[n] & BIT(j) ->
#ifdef FIX_REFRESH
     gate[n] = 0;                            /* close/1 + wait_inflight/1 */
     (inflight[n] == 0 || !nup[n]);
#endif
     peers[n] = peers[n] & ~BIT(j);          /* admit(Node, false) */
     if
     :: tst[n] == REMOTE && tnode[n] == j -> /* Lost = keys_on(Node); purge_node/2 */
        rywgap[n] = (w_fwd[tpid[n]] != 0);    /* ghost: see RYW */
        set_entry(n, ABSENT, 0, 0, 0); x = 1
     :: else -> skip
     fi;
#ifdef FIX_ASKS
     /* shoal_view:fail_asks/2, after the peer's row and its replicas are gone: `retry' to
      * this node's caller if it asked j (caller n runs on node n) */
     if
     :: n < NC && askn[n] == j -> askn[n] = NONE; reply(n, askr[n], LOST, 0, 0, 0)
     :: else -> skip
     fi;
#endif
     if
     :: hsp[n] == j ->                       /* abandon_spawns */
        hsp[n] = NONE; release(n, MEMBER); reply(hcal[n], href[n], RETRY, 0, 0, 0);
        hcal[n] = 0; href[n] = 0
     :: else -> skip
     fi;
#ifdef FIX_REFRESH
     if                                      /* ask_refresh/2: {refresh, node(), Lost} */
     :: x ->
        for (k : 0 .. N-1) {
          if
          :: k != n && (peers[n] & BIT(k)) -> msend(n, k, REFRESH, 0, 0, 0, 0)
          :: else -> skip
          fi
        }
     :: else -> skip
     fi;
#endif
     x = 0;
     propose()
  :: else -> maybe_activate()
  fi
}

/* on_refresh/3 ({refresh, From, Keys} from peer j): send our pending ops first (flush/1),
 * then {repl, node(), [up of each of the keys we own]} to j alone, on the same channel (so
 * it arrives before our later view_ack) */
inline on_refresh() {
  if
  :: peers[n] & BIT(j) ->
     flush();
     if
     :: tst[n] == LOCAL -> msend(n, j, UP, n, tpid[n], tvsn[n], 0)   /* moving or not */
     :: else -> skip
     fi
  :: else -> skip
  fi
}

/* home_claim ({claim, K, V, Caller} from caller j: a = V, b = ref): active in V, claim,
 * pick the host, spawn here or {spawn, K, V, self(), [Caller]} to the host */
inline home_claim() {
  if
  :: !(gate[n] && P[n] == a) -> reply(j, b, RETRY, 0, 0, 0)
  :: else ->
     if
     :: hsp[n] != NONE || tst[n] == CLAIMED ->  /* pending: queue the caller */
        qwait[n] = qwait[n] | BIT(j); qref[n*NC+j] = b
     :: hsp[n] == NONE && (tst[n] == LOCAL || tst[n] == REMOTE) ->
        reply(j, b, OK, tnode[n], tpid[n], tvsn[n])
     :: hsp[n] == NONE && (tst[n] == ABSENT || tst[n] == TOMB) ->
        claim(n, MEMBER);
        if
        :: a & BIT(0) -> y = 0
        :: a & BIT(1) -> y = 1
        :: a & BIT(2) -> y = 2
        fi;
        printf("EV node %d: member claims as home, host %d\n", n, y);
        if
        :: y == n ->                          /* spawn_here(.., defer): the worker answers */
           spawn_worker(n, 0, w, v); defer(j, b, w, v)
        :: else ->
           hsp[n] = y; hcal[n] = j; href[n] = b;
           msend(n, y, SPAWN, a, j * 4 + b, tvsn[n], lc[n])
        fi
     fi
  fi
}

/* answer the callers queued on K once no claim or spawn is pending (the claim's outcome) */
inline answer_queued() {
  for (k : 0 .. NC-1) {
    if
    :: qwait[n] & BIT(k) ->
       if
       :: tst[n] == LOCAL || tst[n] == REMOTE ->
          reply(k, qref[n*NC+k], OK, tnode[n], tpid[n], tvsn[n])
       :: else -> reply(k, qref[n*NC+k], QRETRY, 0, 0, 0)
       fi;
       qref[n*NC+k] = 0
    :: else -> skip
    fi
  }
  qwait[n] = 0
}

/* on_spawned ({spawned, K, Result} from host j: a = result, b/c/d = node/pid/vsn): store the
 * replica over our claim, or give the claim up */
inline on_spawned() {
  if
  :: hsp[n] == j -> hsp[n] = NONE; hcal[n] = 0; href[n] = 0
  :: else -> skip
  fi;
  if
  :: a == OK -> put_remote(n, b, c, d);   /* over our claim if newer than its Min */
     if                                   /* settle/4: a claim still ours refused it */
     :: tst[n] == CLAIMED && tclm[n] == MEMBER -> release(n, MEMBER); a = QRETRY
     :: else -> skip
     fi
  :: else -> release(n, MEMBER); a = QRETRY
  fi;
  /* the callers queued since the request went (the `sent' map; the host answered the
   * one that went with it) get the Result, or `retry' */
  for (k : 0 .. NC-1) {
    if
    :: qwait[n] & BIT(k) -> reply(k, qref[n*NC+k], a, b, c, d); qref[n*NC+k] = 0
    :: else -> skip
    fi
  }
  qwait[n] = 0
}

/* host_spawn ({spawn, K, V, Home, [Caller]}: a = V, b = caller*4 + ref, c = the claim's Min,
 * d = the home's clock): active in V,
 * claim (a local claim held by another process: retry), spawn and register, answer the
 * caller and the home (a member j when fromMember) */
inline host_spawn(hs_fromMember) {
#ifdef FIX_SPAWN_CLOCK
  if                                      /* F3: the host's clock passes the home's */
  :: d > lc[n] -> lc[n] = d
  :: else -> skip
  fi;
#endif
  if
  :: !(gate[n] && P[n] == a) -> k = RETRY
  :: else ->
     if
     :: tst[n] == CLAIMED -> k = RETRY
     :: tst[n] == LOCAL || (tst[n] == REMOTE && !STALE_AT_HOST(n, c)) ->
        k = OK; y = tnode[n]; w = tpid[n]; v = tvsn[n]
     :: tst[n] == ABSENT || tst[n] == TOMB || (tst[n] == REMOTE && STALE_AT_HOST(n, c)) ->
        spawn_worker(n, c, w, v); k = OK; y = n; x = 1  /* spawn_here / spawn_over_here */
     fi
  fi;
  if
  :: !hs_fromMember && x ->
     defer(b / 4, b % 4, w, v)            /* `defer': the worker answers after init/2 */
  :: else -> reply(b / 4, b % 4, k, y, w, v)   /* at once (`ack': true, or `false') */
  fi;
  if
  :: hs_fromMember -> msend(n, j, SPAWNED, k, y, w, v)
  :: else -> skip
  fi
}

/* takeover ({takeover, [{K, Transfer, V}], ReplyTo} from the mover: a = old pid, b = V,
 * c = the source node): shoal_mover:takeover/2 starts the successor and registers it
 * {over, V, none} inside the gate (shoal_view:register_over/5: the member step waits for
 * the gate, TAKEOVER_OK), which replaces an absent entry, a tomb or a replica not newer
 * than V, with a version above V and above what it replaces; a claim, a local worker or a
 * newer replica is an error. Answers {taken, ..}. */
inline takeover() {
  if
  :: tst[n] == CLAIMED || tst[n] == LOCAL || (tst[n] == REMOTE && tvsn[n] > b) ->
     k = FAIL; y = 0; w = 0; v = 0
  :: else ->
     if
     :: tst[n] == TOMB && tvsn[n] > b -> b = tvsn[n]
     :: else -> skip
     fi;
     spawn_worker(n, b, w, v); k = OK; y = n
  fi;
  assert(nfull(m2mv)); m2mv!TAKEN,k,y,w,v
}

inline on_member_msg() {
  if
  :: t == HELLO ->
     if
     :: !(peers[n] & BIT(j)) -> msend(n, j, HELLO_ACK, 0, 0, 0, 0); add_peer()
     :: else -> pg[n] = pg[n] & ~BIT(j)
     fi
  :: t == HELLO_ACK ->
     if
     :: !(peers[n] & BIT(j)) -> add_peer()
     :: else -> pg[n] = pg[n] & ~BIT(j)
     fi
  :: t == VIEW -> on_view()
  :: t == VIEW_ACK -> on_view_ack()
  :: t == UP -> apply_up()
  :: t == DOWN -> apply_down()
  :: t == MOVED -> apply_moved()
  :: t == SYNC -> on_sync()
  :: t == SPAWN -> host_spawn(1)
  :: t == SPAWNED -> on_spawned()
  :: t == MDOWN -> peer_left()
  :: t == REFRESH -> on_refresh()
  fi
}

inline on_caller_msg() {
  if
  :: t == CLAIM -> home_claim()
  :: t == SPAWN -> host_spawn(0)
  fi
}

inline clr() {
  t = 0; a = 0; b = 0; c = 0; d = 0; j = 0; k = 0; x = 0; y = 0; w = 0; v = 0
}

#define RECV_M(jj) printf("RECV member %d <- member %d: %e %d %d %d %d\n", n, jj, t, a, b, c, d)
#define RECV_C(jj) printf("RECV member %d <- caller %d: %e %d %d %d %d\n", n, jj, t, a, b, c, d)
proctype member(byte n) {
  mtype t, ft;
  byte a, b, c, d, j, k, x, y, w, v, fa, fb, fc, fd;
end:
  do
  :: atomic { n != 0 && nempty(m2m[CH(0, n)]) -> m2m[CH(0, n)]?t,a,b,c,d; j = 0; RECV_M(j); on_member_msg(); clr() }
  :: atomic { n != 1 && nempty(m2m[CH(1, n)]) -> m2m[CH(1, n)]?t,a,b,c,d; j = 1; RECV_M(j); on_member_msg(); clr() }
  :: atomic { n != 2 && nempty(m2m[CH(2, n)]) -> m2m[CH(2, n)]?t,a,b,c,d; j = 2; RECV_M(j); on_member_msg(); clr() }
  :: atomic { n != 0 && nempty(c2m[CH(0, n)]) -> c2m[CH(0, n)]?t,a,b,c,d; j = 0; RECV_C(j); on_caller_msg(); clr() }
  :: atomic { n != 1 && nempty(c2m[CH(1, n)]) -> c2m[CH(1, n)]?t,a,b,c,d; j = 1; RECV_C(j); on_caller_msg(); clr() }
  :: atomic { n != 2 && nempty(c2m[CH(2, n)]) -> c2m[CH(2, n)]?t,a,b,c,d; j = 2; RECV_C(j); on_caller_msg(); clr() }
  :: atomic { TAKEOVER_OK(n) && nempty(mv2m[n]) -> mv2m[n]?t,a,b,c,d;
              printf("RECV member %d <- mover: takeover of worker %d v%d\n", n, a, b); takeover(); clr() }
  :: atomic { nempty(pend[n]) -> flush() }
  :: atomic { dkw[0] != 0 && w_node[dkw[0]] == n -> deliver_ack(0) }
  :: atomic { dkw[1] != 0 && w_node[dkw[1]] == n -> deliver_ack(1) }
  :: atomic { dkw[2] != 0 && w_node[dkw[2]] == n -> deliver_ack(2) }
  :: atomic { qwait[n] != 0 && hsp[n] == NONE && tst[n] != CLAIMED -> answer_queued() }
  :: atomic { !nup[n] -> break }
  od
}

/* ======================================================================================== */
/* Caller (shoal_arbiter:resolve/4)                                                          */
/* ======================================================================================== */

/* Caller refs are 1..3 (the alias of a request). A request answered `retry' by the caller's
 * own member for a lost peer (LOST) can still get its real answer later (from a host the
 * lost home had asked, or from the lost peer itself if its message was in flight), so
 * that ref `ab' is never used again; the model has at most one such request per caller
 * (asserted: at most one node dies). Answers to older requests are dropped (the alias
 * takes one reply). */
/* Backing off, part two: a caller sends a request only when the member it asks is active in
 * the caller's view (else it waits: its view changes, or that member becomes active). A
 * request sent earlier would be answered `retry' with nothing changed, or arrive after that
 * member became active, which the model covers by sending it then (any delay follows). */
#define HOME_READY(cc) (HOME(P[cc]) == (cc) || (gate[HOME(P[cc])] && P[HOME(P[cc])] == P[cc]))
#define HOST_READY(y)  ((y) == c || (gate[y] && P[y] == V))

/* a new attempt: the last one's answer and choices are forgotten */
inline forget() {
  cwait = cwait & ~BIT(c); kick = kick & ~BIT(c);
  V = 0; H = 0; Y = 0; rr = 0; k = 0; rn = 0; rp = 0; rv = 0
}
inline next_ref() {
  r = r % 3 + 1;
  if
  :: r == ab -> r = r % 3 + 1
  :: else -> skip
  fi
}
inline new_request() {
  next_ref();
  cwait = cwait | BIT(c);
  do                                  /* answers to older requests: dropped */
  :: nempty(rep[c]) -> rep[c]?_,_,_,_,_,_
  :: empty(rep[c]) -> break
  od
}

/* ask/3 + send: note the request {r, X} in the asks table, then send it to X's member
 * (lost if that member is down: the caller's own member will fail the ask once it drops
 * the peer). X is a peer: the caller took its view inside the gate in this same step (in
 * the code the member may drop X in between: ask/3 then answers `undefined' and the
 * caller retries, which is what the LOST answer gives it here too). */
inline ask_send(as_X, as_t, as_a, as_b, as_c, as_d) {
  new_request();
  assert(peers[c] & BIT(as_X));
#ifdef FIX_ASKS
  askn[c] = as_X; askr[c] = r;
#endif
  if
  :: nup[as_X] -> assert(nfull(c2m[CH(c, as_X)])); c2m[CH(c, as_X)]!as_t,as_a,as_b,as_c,as_d
  :: else -> skip
  fi
}

/* await_claimed: the answer to request r (asked/2 removes it from the asks table). Without
 * the asks table (-DNO_FIX_ASKS, the draft) the caller watches the member X it asked and
 * gives the request up on its 'DOWN'. */
inline await_reply(aw_X) {
  do
  :: atomic { rep[c]?REPLY,rr,k,rn,rp,rv ->
     if
     :: rr == r ->
        askn[c] = NONE; askr[c] = 0;
        if
        :: k == LOST -> assert(ab == 0); ab = r
        :: else -> skip
        fi;
        break
     :: else -> skip                   /* an answer to an earlier request: dropped */
     fi }
#ifndef FIX_ASKS
  :: atomic { !nup[aw_X] -> assert(ab == 0); ab = r; k = LOST; break }
#endif
  :: !nup[c] -> goto gone
  od
}

proctype caller(byte c) {
  byte V, H, Y, r, rr, k, rn, rp, rv, budget, ab;
end_idle:
  (cstart[c]);
  budget = RETRY_BUDGET;
  goto again;
retry:
  atomic {
    if
    :: budget > 0 -> budget--
    :: else -> (kick & BIT(c)) || !nup[c]; budget = RETRY_BUDGET
    fi;
    forget()
  }
again:
  if
  :: atomic { !nup[c] -> goto gone }
  /* shoal:call's lookup in the caller's own table */
  :: atomic { nup[c] && (tst[c] == LOCAL || tst[c] == REMOTE) ->
              rp = tpid[c]; rv = tvsn[c]; goto done }
  /* another local process holds the claim: await_claim (its outcome is in the table) */
  :: atomic { nup[c] && tst[c] == CLAIMED -> skip };
     atomic { (tst[c] != CLAIMED || !nup[c]); forget(); goto again }
  /* resolve/loop: enter the gate (blocks while the member is not active), read the view
   * and the home; at_home: claim and pick the host, staying inside the gate only to spawn
   * here; elsewhere: leave the gate and ask the home ({claim, K, V, Caller}) */
  :: atomic { nup[c] && gate[c] && (tst[c] == ABSENT || tst[c] == TOMB) && HOME_READY(c) ->
       V = P[c]; H = HOME(V);
       if
       :: H == c ->
          claim(c, c);
          if
          :: (V & BIT(0)) && HOST_READY(0) -> Y = 0
          :: (V & BIT(1)) && HOST_READY(1) -> Y = 1
          :: (V & BIT(2)) && HOST_READY(2) -> Y = 2
          fi;
          printf("EV caller %d: view %d, claims at home (itself), host %d\n", c, V, Y);
          if
          :: Y == c -> inflight[c]++            /* stays inside the gate */
          :: else ->                            /* spawn_on: {spawn, K, V, [Caller], none, Min, Clock} */
             ask_send(Y, SPAWN, V, c*4+r, tvsn[c], lc[c])
          fi
       :: else ->
          printf("EV caller %d: view %d, asks home %d\n", c, V, H);
          ask_send(H, CLAIM, V, r, 0, 0)
       fi }
  fi;
  if
  :: H == c && Y == c ->
     /* spawn_claimed: register over our claim, then leave the gate (the caller then waits
      * for the worker's init ack, which always succeeds here) */
     atomic {
       if
       :: nup[c] && tst[c] == CLAIMED && tclm[c] == c ->
          spawn_worker(c, 0, rp, rv); inflight[c]--; goto done
       :: else -> inflight[c]--; forget(); goto again
       fi
     }
  :: H == c && Y != c ->
     await_reply(Y);
     if
     :: k == OK -> atomic { put_remote(c, rn, rp, rv);   /* read-your-writes */
                            if                           /* settle/4 */
                            :: tst[c] == CLAIMED && tclm[c] == c -> release(c, c); goto retry
                            :: else -> goto done
                            fi }
     :: k == FAIL -> atomic {                                           /* {error, R} */
#ifdef FIX_FAIL_VSN
          seen(c, rv);    /* F6: the claimer's clock passes the failed worker's version
                           * (await_claimed/4) before spawn_on/7 releases the claim */
#endif
          release(c, c); rp = 0; rv = 0; goto done }
     :: else -> atomic { release(c, c); goto retry }
     fi
  :: H != c ->
     await_reply(H);
     if
     :: k == OK -> atomic { put_remote(c, rn, rp, rv); goto done }   /* read-your-writes */
     :: k == FAIL ->                                                  /* {error, R} */
#ifdef FIX_FAIL_VSN
        seen(c, rv);      /* F6: await_claimed/4 observes {failed, Vsn} (any caller) */
#endif
        rp = 0; rv = 0; goto done
     :: k == QRETRY -> atomic { forget(); goto again }
     :: else -> goto retry
     fi
  fi;
done:
  cdone[c] = 1; ret_pid[c] = rp; ret_vsn[c] = rv; cwait = cwait & ~BIT(c); kick = kick & ~BIT(c);
  printf("EV caller %d returns worker %d v%d\n", c, rp, rv);
gone:
  skip
}

/* ======================================================================================== */
/* Mover (shoal_worker_proc:migrate/2, shoal_mover:move_batch/3 on the source)               */
/* ======================================================================================== */

/* worker i can be moved: it serves, its node's entry is it (local, not moving), and its
 * node has a peer to move it to */
#define MOVABLE(i) (w_serving[i] && nup[w_node[i]] && tst[w_node[i]] == LOCAL && \
                    tpid[w_node[i]] == i && !tmov[w_node[i]] && peers[w_node[i]] != 0)

proctype mover() {
  byte S, T, W, V, k, nn, nw, nv, q;
end_idle:
  atomic {
    (MOVABLE(1) || MOVABLE(2) || MOVABLE(3) || MOVABLE(4) || MOVABLE(5) || MOVABLE(6));
    if
    :: MOVABLE(1) -> W = 1
    :: MOVABLE(2) -> W = 2
    :: MOVABLE(3) -> W = 3
    :: MOVABLE(4) -> W = 4
    :: MOVABLE(5) -> W = 5
    :: MOVABLE(6) -> W = 6
    fi;
    S = w_node[W];
    if
    :: peers[S] & BIT(0) -> T = 0
    :: peers[S] & BIT(1) -> T = 1
    :: peers[S] & BIT(2) -> T = 2
    fi;
    /* set_moving + handoff: W holds what reaches it from now on */
    tmov[S] = 1; w_serving[W] = 0; V = tvsn[S];
    assert(nfull(mv2m[T])); mv2m[T]!TAKEOVER,W,V,S,0
  }
  do
  :: m2mv?TAKEN,k,nn,nw,nv -> break
  :: !nup[T] -> k = LOST; break          /* the 'DOWN' of the target's member */
  :: !nup[S] -> goto out
  od;
  if
  :: atomic { nup[S] && k == OK ->
     /* the source stores W' over W's moving entry (relaying `up W''), W forwards to W' */
     pr_outcome = 1; put_remote(S, nn, nw, nv); pr_outcome = 0;   /* put_successor/5 */
     printf("EV node %d: worker %d moved to node %d as worker %d v%d\n", S, W, nn, nw, nv);
     assert(nv > V);
     w_fwd[W] = nw }
     /* after handoff_grace (or when W' dies) W exits */
     atomic { w_alive[W] = 0; printf("EV worker %d retires\n", W);
              if :: nup[S] -> owner_gone(S, W) :: else -> skip fi }
#ifdef FIX_TAKEBACK_WAIT
  /* F8b: after the target's 'DOWN', only once S's member has dropped T (await_dropped/3) */
  :: atomic { nup[S] && k != OK && TAKEOVER_OK(S) && (k != LOST || !(peers[S] & BIT(T))) ->
#else
  :: atomic { nup[S] && k != OK && TAKEOVER_OK(S) ->
#endif
     /* shoal_worker_proc:reclaim/3: register {over, V, T} inside the gate: over an absent
      * entry, a tomb, a replica not newer than V or any replica of T, above V and what it
      * replaces; another local worker or a newer replica: step aside for it (forward) */
     assert(tst[S] != LOCAL || tpid[S] == W);
     printf("EV node %d: the move of worker %d failed, it takes its key back\n", S, W);
     if
     :: tst[S] == CLAIMED ->             /* {error, {claimed, _}}: reclaim/3 keeps W as is */
        w_serving[W] = 1; printf("EV worker %d goes on unregistered (a claim)\n", W)
     :: tst[S] == REMOTE && tvsn[S] > V && tnode[S] != T ->
        w_fwd[W] = tpid[S]; printf("EV worker %d steps aside\n", W)
     :: else ->
        if
        :: (tst[S] == TOMB || tst[S] == REMOTE) && tvsn[S] > V -> V = tvsn[S]
        :: else -> skip
        fi;
#ifndef FIX_TAKEBACK_VSN
        if
        :: tst[S] == LOCAL && tpid[S] == W -> /* REGISTRY_OWN as it was: the moving flag
                                              * cleared, the version kept, nothing sent */
           assert(tdef[S] < tvsn[S]);
           tmov[S] = 0; tdef[S] = 0; w_serving[W] = 1; KICK
        :: else ->
#endif
        new_vsn(S, V, nv);
        /* the '$shoal_yield' of each replica refused while W moved (F8a) is stale now:
         * W never steps aside for it */
        assert(tdef[S] < nv);
        set_entry(S, LOCAL, S, W, nv); w_vsn[W] = nv; w_serving[W] = 1;
        qop(S, UP, S, W, nv)
#ifndef FIX_TAKEBACK_VSN
        fi
#endif
     fi }
  :: atomic { !nup[S] -> skip }
  fi;
out:
  skip
}

/* ======================================================================================== */
/* Environment: nodes start, connect, die; workers stop                                      */
/* ======================================================================================== */

/* member i greets node j (at its start, or on nodeup): a probe until j answers or turns
 * out to have no member */
inline greet(gr_i, gr_j) {
  if
  :: nup[gr_i] && nup[gr_j] && !(peers[gr_i] & BIT(gr_j)) && !(pg[gr_i] & BIT(gr_j)) ->
     pg[gr_i] = pg[gr_i] | BIT(gr_j); msend(gr_i, gr_j, HELLO, 0, 0, 0, 0)
  :: else -> skip
  fi
}

/* the pool starts on node m, which is connected to the nodes in conn */
inline start_member(sm_m, sm_conn) {
  nup[sm_m] = 1; P[sm_m] = BIT(sm_m); seq[sm_m] = 1; peers[sm_m] = 0; acked[sm_m] = 0; hsp[sm_m] = NONE;
  pg[sm_m] = 0;
  for (i : 0 .. N-1) {
    if
    :: (sm_conn & BIT(i)) -> greet(sm_m, i)
    :: else -> skip
    fi
  }
#ifdef FIX_PROBE
  gate[sm_m] = (pg[sm_m] == 0);
#else
  gate[sm_m] = 1;                            /* the draft: a member alone is active at once */
#endif
  run member(sm_m)
}

/* drop everything in a channel */
inline drain(dr_ch) {
  do
  :: nempty(dr_ch) -> dr_ch?_,_,_,_,_
  :: empty(dr_ch) -> break
  od
}

/* node d dies: its member, workers and callers go; peers get 'DOWN' after whatever of
 * d's messages is still delivered */
inline kill(kl_d) {
  nup[kl_d] = 0; gate[kl_d] = 0; KICK;
  for (i : 1 .. MAXW) {
    if
    :: w_alive[i] && w_node[i] == kl_d -> w_alive[i] = 0; w_serving[i] = 0
    :: else -> skip
    fi
  }
  for (i : 0 .. N-1) {
    if
    :: i != kl_d && nup[i] ->
       if
       :: drain(m2m[CH(kl_d, i)])            /* in flight when the link went: lost */
       :: skip                            /* or delivered */
       fi;
       assert(nfull(m2m[CH(kl_d, i)])); m2m[CH(kl_d, i)]!MDOWN,0,0,0,0
    :: else -> skip
    fi;
    if
    :: i != kl_d -> drain(m2m[CH(i, kl_d)]); drain(c2m[CH(i, kl_d)])
    :: else -> skip
    fi
  }
  for (i : 0 .. NC-1) {
    if
    :: dkw[i] != 0 && (w_node[dkw[i]] == kl_d || i == kl_d) -> dkw[i] = 0; dkr[i] = 0; dkv[i] = 0
    :: else -> skip
    fi
  }
  if
  :: kl_d < NC -> askn[kl_d] = NONE; askr[kl_d] = 0
  :: else -> skip
  fi;
  drain(mv2m[kl_d]);
  do
  :: nempty(pend[kl_d]) -> pend[kl_d]?_,_,_,_,_
  :: empty(pend[kl_d]) -> break
  od
}

/* a serving worker stops (stop_worker, or it exits): its node's member sends `down' */
#define STOPPABLE(i) (w_serving[i] && nup[w_node[i]] && tst[w_node[i]] == LOCAL && \
                      tpid[w_node[i]] == i && !tmov[w_node[i]])
inline stop_worker() {
  (STOPPABLE(1) || STOPPABLE(2) || STOPPABLE(3) || STOPPABLE(4) || STOPPABLE(5) ||
   STOPPABLE(6));
  if
  :: STOPPABLE(1) -> i = 1
  :: STOPPABLE(2) -> i = 2
  :: STOPPABLE(3) -> i = 3
  :: STOPPABLE(4) -> i = 4
  :: STOPPABLE(5) -> i = 5
  :: STOPPABLE(6) -> i = 6
  fi;
  w_alive[i] = 0; w_serving[i] = 0;
  printf("EV node %d: worker %d stops\n", w_node[i], i);
  owner_gone(w_node[i], i)
}

/* members in `mask' already agreed: peers of each other, active in view `mask' at Seq 1 */
inline agree(ag_mask) {
  for (i : 0 .. N-1) {
    if
    :: (ag_mask) & BIT(i) ->
       nup[i] = 1; P[i] = (ag_mask); seq[i] = 1; peers[i] = (ag_mask) & ~BIT(i);
       acked[i] = peers[i]; gate[i] = 1; hsp[i] = NONE;
       for (j : 0 .. N-1) {
         if
         :: j != i && ((ag_mask) & BIT(j)) -> lvp[i*N+j] = (ag_mask); lvs[i*N+j] = 1
         :: else -> skip
         fi
       }
    :: else -> skip
    fi
  }
}

/* node 2 joins late and non-transitively: it connects to node 0, its pool starts, node 0
 * sees nodeup (its greeting is lost if node 2's member is not registered yet), and only
 * later node 2 connects to node 1. Without GREET_X only node 2 greets (node 0's greeting is
 * lost, node 1's nodeup comes after node 2's hello was answered); with GREET_X both sides
 * of each link greet, in either order, so hellos cross. */
inline join2() {
  atomic { start_member(2, BIT(0)) }
#ifdef GREET_X
  if
  :: true -> atomic { greet(0, 2) }
  :: true -> skip
  fi;
#endif
  CSTART(2);
#ifdef GREET_X
  if
  :: true -> atomic { greet(1, 2) }; atomic { greet(2, 1) }
  :: true -> atomic { greet(2, 1) }; atomic { greet(1, 2) }
  fi
#else
  atomic { greet(2, 1) }
#endif
}

/* One process per kind of event, so events interleave with everything in every order. */
proctype joiner() {
  byte i, j;
  join2()
}

/* a node dies (any node whose pool runs) */
proctype killer() {
  byte i, j;
end_idle:
  atomic {
    if
    :: nup[0] -> kill(0)
    :: nup[1] -> kill(1)
    :: nup[2] -> kill(2)
    fi
  }
}

proctype stopper() {
  byte i;
end_idle:
  atomic { stop_worker() }
}

/* ======================================================================================== */
/* Invariants                                                                               */
/* ======================================================================================== */

#define SERVES(i) (w_alive[i] && w_serving[i])
/* at most one live worker for K (a moving or forwarding predecessor does not serve) */
#define ONE_WORKER (SERVES(1) + SERVES(2) + SERVES(3) + SERVES(4) + SERVES(5) + SERVES(6) <= 1)

/* the incarnation that holds the state now, following forwarding from p */
#define F1(p)  ((w_fwd[p] != 0) -> w_fwd[p] : (p))
#define LIN(p) F1(F1(F1(p)))
/* read-your-writes: a caller that returned with worker p at version v finds, while p's
 * lineage is serving, that worker or a newer one in its own node's table */
#define RYW(cc) (!cdone[cc] || !nup[cc] || !SERVES(LIN(ret_pid[cc])) || rywgap[cc] || \
                 ((tst[cc] == LOCAL || tst[cc] == REMOTE) && tvsn[cc] >= ret_vsn[cc]))
/* forwarding only to a strictly newer incarnation */
#define FWD(i) (w_fwd[i] == 0 || w_vsn[w_fwd[i]] > w_vsn[i])

/* two members that are peers of each other are never active in different views at once */
#define AGREE(i, j) (!(gate[i] && gate[j] && (peers[i] & BIT(j)) && (peers[j] & BIT(i))) || \
                     P[i] == P[j])

#define INV (ONE_WORKER && RYW(0) && RYW(1) && RYW(2) && \
             FWD(1) && FWD(2) && FWD(3) && FWD(4) && FWD(5) && FWD(6) && \
             AGREE(0, 1) && AGREE(0, 2) && AGREE(1, 2))

active proctype monitor() {
end:
  atomic { !(INV) -> assert(ONE_WORKER); assert(RYW(0)); assert(RYW(1)); assert(RYW(2));
                     assert(FWD(1) && FWD(2) && FWD(3) && FWD(4) && FWD(5) && FWD(6));
                     assert(AGREE(0, 1) && AGREE(0, 2) && AGREE(1, 2)) }
}

/* At the end (nothing can move: every caller done, every channel between live members
 * empty): every caller on a live node returned; every live member is active in the view of
 * all live members; every live table names the serving worker (local on its node, a
 * replica of exactly that incarnation elsewhere) or, if there is none, nothing. */
active proctype endcheck() {
  byte i, L, live;
  timeout ->
  atomic {
    live = 0; L = 0;
    for (i : 0 .. N-1) {
      if
      :: nup[i] -> live = live | BIT(i)
      :: else -> skip
      fi
    }
    for (i : 1 .. MAXW) {
      if
      :: SERVES(i) -> L = i
      :: else -> skip
      fi
    }
    for (i : 0 .. N-1) {
      printf("END node %d: up %d, entry %d (0 absent 1 claimed 2 local 3 remote 4 tomb) owner %d worker %d v%d; serving worker %d\n",
             i, nup[i], tst[i], tnode[i], tpid[i], tvsn[i], L)
    }
    for (i : 0 .. N-1) {
      if
      :: nup[i] ->
         assert(!cstart[i] || cdone[i]);
         assert(gate[i] && P[i] == live);
         assert(qwait[i] == 0 && hsp[i] == NONE && inflight[i] == 0);
         if
         :: L != 0 ->
            assert(tpid[i] == L && tvsn[i] == w_vsn[L] &&
                   ((i == w_node[L] && tst[i] == LOCAL) ||
                    (i != w_node[L] && tst[i] == REMOTE && tnode[i] == w_node[L])))
         :: else -> assert(tst[i] == ABSENT || tst[i] == TOMB)
         fi
      :: else -> skip
      fi
    }
  }
}

/* Configurations (test/model/configs): which events run, which nodes start agreed. A
 * configuration is a set of these bits, chosen with -DCFG_x; -DCFG_QUICK makes the search
 * start with a choice among several (one compiled verifier for `make model': compiling pan
 * costs more than searching the quick ones). */
#define E_JOIN   1        /* node 2 joins late (nodes 0 and 1 start agreed) */
#define E_KILL   2        /* a node dies */
#define E_STOP   4        /* a worker stops */
#define E_MOVE   8        /* a worker is migrated */
#define E_WORKER 16       /* worker 1 lives on node 0 from the start */
#define HAS(e) (cfg & (e))

init {
  byte i, j;
  atomic {
#if defined(CFG_QUICK)
    /* race: every caller, no event; join: callers 0 and 2, node 2 joins; leave: callers 1
     * and 2, a node dies */
    if
    :: cfg = 0; cmask = 7
    :: cfg = E_JOIN; cmask = 5
    :: cfg = E_KILL; cmask = 6
    fi;
#else
    cmask = CALLERS;
#if defined(CFG_RACE)
    cfg = 0;
#elif defined(CFG_JOIN)
    cfg = E_JOIN;
#elif defined(CFG_LEAVE)
    cfg = E_KILL;
#elif defined(CFG_STOP)
    cfg = E_STOP;
#elif defined(CFG_MOVE)
    cfg = E_JOIN | E_MOVE | E_WORKER;
#elif defined(CFG_MOVEKILL)
    cfg = E_KILL | E_MOVE | E_WORKER;
#elif defined(CFG_ALL)
    cfg = E_JOIN | E_KILL | E_STOP | E_MOVE;
#else
    assert(false);                        /* choose a configuration: -DCFG_x */
#endif
#endif
    for (i : 0 .. N-1) { hsp[i] = NONE }
    for (i : 0 .. NC-1) { askn[i] = NONE }
    if
    :: HAS(E_JOIN) -> agree(BIT(0) | BIT(1))
    :: else -> agree(BIT(0) | BIT(1) | BIT(2))
    fi;
    if
    :: HAS(E_WORKER) ->
       next_w = 1; w_alive[1] = 1; w_serving[1] = 1; w_node[1] = 0; w_vsn[1] = 4;
       for (i : 0 .. N-1) {
         if
         :: nup[i] -> lc[i] = 1;
            if
            :: i == 0 -> put_entry(0, LOCAL, 0, 1, 4)
            :: else -> put_entry(i, REMOTE, 0, 1, 4)
            fi
         :: else -> skip
         fi
       }
    :: else -> skip
    fi;
    CSTART(0); CSTART(1);
    if
    :: !HAS(E_JOIN) -> CSTART(2)          /* with a join, caller 2 starts with node 2's pool */
    :: else -> skip
    fi;
    for (i : 0 .. N-1) {
      if
      :: nup[i] -> run member(i)
      :: else -> skip
      fi
    }
    for (i : 0 .. NC-1) { run caller(i) }
    if :: HAS(E_JOIN) -> run joiner() :: else -> skip fi;
    if :: HAS(E_KILL) -> run killer() :: else -> skip fi;
    if :: HAS(E_STOP) -> run stopper() :: else -> skip fi;
    if :: HAS(E_MOVE) -> run mover() :: else -> skip fi
  }
}
