# The threads of one call of a compiled loop (gatekit/core/_loop.pyx, _scan.pyx, _projection.pyx):
# starting and joining them, and the judgement by which thread 0 goes on alone on a busy machine.
#
# Each loop keeps its own struct of a call and its own barriers; what they share is here. A
# threaded call must never be slower than one thread would be, on a busy machine too: when
# another process holds a core, a thread of the call is descheduled for milliseconds at a time
# and every other thread waits for it at the next barrier. So thread 0 measures those waits at
# the barriers where the loop lets it, and past a threshold (would_go_faster_alone) runs the
# pass alone, over every thread's share, while the others wait, asleep. A busy spell is often
# short (another library's threads spin for milliseconds after their own work: PyTorch's
# OpenMP threads do, around a gatekit.torch module), so after a while thread 0 calls the others
# back at the end of a step (call_back), and the team is judged afresh; each time it goes
# alone again in the same pass, thread 0 waits longer before the next call.

from gatekit.core._gate cimport gk_barrier, gk_barrier_wait

cdef extern from "_tiles.h" nogil:
    ctypedef struct gk_start:
        pass
    void gk_barrier_init(gk_barrier* barrier, int size)
    long long gk_barrier_waited(gk_barrier* barrier)
    long long gk_now_ns()
    void gk_start_init(gk_start* start)
    int gk_wait_for_start(gk_start* start)
    void gk_set_start(gk_start* start, int value)
    long long gk_wait_while(int* address, int value, int* sleepers)
    void gk_signal(int* word, int* sleepers)

cdef extern from "<pthread.h>" nogil:
    ctypedef unsigned long pthread_t
    ctypedef struct pthread_attr_t:
        pass
    int pthread_create(pthread_t* thread, const pthread_attr_t* attributes,
                       void* (*run)(void*) noexcept nogil, void* argument)
    int pthread_join(pthread_t thread, void** result)


cdef enum:
    MAX_TEAM = 16
    # How long a call runs as a team before thread 0 judges, from the time the team has waited
    # at its barriers, whether one thread would be faster (see would_go_faster_alone).
    JUDGE_AFTER_NS = 2000000
    # How long thread 0 first runs alone before it calls the others back; ALONE_GROWTH times as
    # long after each call, up to ALONE_AT_MOST_NS. On a machine that stays busy each call costs
    # a judging of the team, a few steps at less than one thread's speed (would_go_faster_alone),
    # so the calls must be few: three in a pass of 100 ms, then one a second. (At T = 200,
    # B = 32, H = 256 beside one CPU-bound process, judged by the waits only, 2 ms growing 4
    # times cost 3 % over never calling back, 4 ms growing 2 times 8 %.)
    ALONE_FIRST_NS = 2000000
    ALONE_GROWTH = 4
    ALONE_AT_MOST_NS = 1000000000


ctypedef void* (*MemberMain)(void*) noexcept nogil


cdef inline int start_members(gk_start* start, gk_barrier* barrier, pthread_t* threads,
                              MemberMain main, void* members, size_t member_size,
                              int size) noexcept nogil:
    """Start threads 1 .. size - 1, thread m on main(members + m * member_size) (the caller
    fills the members first; each waits on ``start`` before it runs), meeting at ``barrier``.
    Returns the threads the pass runs on, this one included: ``size`` (the members are then
    running: the caller writes nothing they read), or 1 if the system would not start them
    all; then those started have been told to leave and joined, and ``barrier`` waits for
    this thread alone (the shares are fixed by the team's size: this thread takes every
    unit)."""
    cdef int m, started = 1
    # Before any thread exists: a member released early reaches the barrier as soon as its
    # share of the first chunk or step is done, maybe before this thread runs again; the
    # barrier (in the caller's struct, on its stack) must not hold what the stack held before.
    gk_barrier_init(barrier, size)
    gk_start_init(start)
    for m in range(1, size):
        if pthread_create(&threads[m], NULL, main, <char*> members + m * member_size) != 0:
            break
        started += 1
    if started < size:
        gk_set_start(start, -1)
        join_members(threads, started)
        gk_barrier_init(barrier, 1)
        return 1
    gk_set_start(start, 1)
    return size


cdef inline void join_members(pthread_t* threads, int size) noexcept nogil:
    """Wait for threads 1 .. size - 1 to end."""
    cdef int m
    for m in range(1, size):
        pthread_join(threads[m], NULL)


# How a thread goes on after a barrier where thread 0 may decide to go alone.
cdef enum StepEnd:
    GO_ON
    STOP            # a gate has failed on some thread: every thread stops at this step
    GO_ALONE        # from here thread 0 runs every unit; the others wait (wait_to_be_called)
    TEAM_AGAIN      # thread 0, alone, has called the others back: from here, its own units


cdef struct Pace:            # thread 0's view of the team's speed, over one pass
    long long started        # gk_now_ns() when judging began; 0 before the first judging
                             # barrier, -1 between it and the second
    long long waited_before  # the barrier's waits until then
    # The steps after whose barriers thread 0 went on alone (or -1), and which of its going
    # alone each was (1, 2...): the last two, at episodes % 2. A thread that has just passed
    # such a barrier reads them, while thread 0 may already have called it back and decided,
    # before the next barrier, to go alone again; it cannot decide twice before that thread
    # meets it at a barrier again, so the step that thread looks for is still there.
    Py_ssize_t alone_after[2]
    int alone_episode[2]
    int episodes
    bint alone               # thread 0 is on its own (thread 0's to read)
    Py_ssize_t alone_at      # a step at which thread 0 goes alone whatever it measures (tests)
    Py_ssize_t back_at       # a step after which thread 0, alone, calls the others back
                             # whatever the time (tests); -1: when it has been alone long enough
    long long alone_since    # gk_now_ns() when thread 0 last went on alone
    long long alone_for      # how long it stays alone before it calls the others back
    Py_ssize_t alone_steps   # steps (barriers it did not meet) thread 0 ran since then
    long long alone_step_ns  # its time per step alone, measured when it last called back; 0
    Py_ssize_t team_steps    # steps the team ran since its judging began
    int calls                # thread 0's calls to the waiting threads (back, or to leave):
                             # one per going alone, so the call of episode e makes it e
    int sleepers             # waiting threads asleep on ``calls``
    Py_ssize_t resume_after  # a call's step: the others resume after its end; -1: they leave


cdef inline void start_pace(Pace* pace, Py_ssize_t alone_at, Py_ssize_t back_at) noexcept nogil:
    pace.started, pace.waited_before, pace.alone_at = 0, 0, alone_at
    pace.alone_after[0] = pace.alone_after[1] = -1
    pace.alone_episode[0] = pace.alone_episode[1] = 0
    pace.episodes, pace.alone = 0, False
    pace.back_at, pace.alone_since, pace.alone_for = back_at, 0, ALONE_FIRST_NS
    pace.alone_steps, pace.alone_step_ns, pace.team_steps = 0, 0, 0
    pace.calls, pace.sleepers, pace.resume_after = 0, 0, -1


cdef inline StepEnd meet_at_end_of_step(Pace* pace, gk_barrier* barrier, int size,
                                        Py_ssize_t* failures, int index, Py_ssize_t t,
                                        bint failed, bint alone, bint forced) noexcept nogil:
    """Record thread ``index``'s failure at step t in ``failures`` (the step each thread saw a
    gate fail at, or -1) and meet the others at ``barrier`` (unless thread 0 is alone); say how
    the pass goes on. Before the barrier thread 0 decides whether to go alone after it, at step
    t where ``forced`` (the tests' hook), or where its waits say the team is slower. Alone, it
    calls the others back after step t (TEAM_AGAIN) once it has been alone long enough."""
    cdef int m
    if failed and failures[index] < 0:
        failures[index] = t
    if alone:
        if failed:
            return STOP
        pace.alone_steps += 1
        # (A pass on one thread is ``alone`` too, with nobody to call: pace.alone is not set.)
        if pace.alone and (
                t == pace.back_at
                or (pace.back_at < 0 and gk_now_ns() - pace.alone_since >= pace.alone_for)):
            call_back(pace, t)
            return TEAM_AGAIN
        return GO_ON
    if index == 0 and pace.started > 0:
        pace.team_steps += 1
    if (index == 0 and not failed and not pace.alone
            and (forced or would_go_faster_alone(pace, barrier, size))):
        # The barrier publishes it: every thread reads it after.
        pace.episodes += 1
        pace.alone_after[pace.episodes % 2] = t
        pace.alone_episode[pace.episodes % 2] = pace.episodes
        pace.alone = True
    gk_barrier_wait(barrier)
    if index == 0 and pace.started <= 0:
        # Judge from the second barrier on: the first also waits for the slowest thread's
        # share of what precedes the steps (and for its start), which says nothing about later
        # steps, and the others add their wait at it only after they pass it.
        if pace.started == 0:
            pace.started = -1
        else:
            pace.started, pace.waited_before = gk_now_ns(), gk_barrier_waited(barrier)
            pace.team_steps = 0
    # Only failures at step t: a thread past this barrier may already have recorded one at
    # its next step (thread 0 alone, or a member racing ahead), which the others must not
    # read as a reason to stop here, where the rest still expect them at that next barrier.
    for m in range(size):
        if failures[m] == t:
            return STOP
    if pace.alone_after[0] != t and pace.alone_after[1] != t:
        return GO_ON
    if index == 0:
        pace.alone_since, pace.alone_steps = gk_now_ns(), 0
    return GO_ALONE


cdef inline void call_back(Pace* pace, Py_ssize_t t) noexcept nogil:
    """Thread 0, alone: call the others back; they resume after step t, on their own units, and
    the team is judged afresh (from the second barrier on, as at the start of a pass), now also
    against thread 0's time per step alone."""
    if pace.alone_steps > 0:
        pace.alone_step_ns = (gk_now_ns() - pace.alone_since) // pace.alone_steps
    pace.alone, pace.started, pace.resume_after = False, 0, t
    pace.alone_for = min(ALONE_GROWTH * pace.alone_for, <long long> ALONE_AT_MOST_NS)
    gk_signal(&pace.calls, &pace.sleepers)


cdef inline Py_ssize_t wait_to_be_called(Pace* pace, Py_ssize_t t) noexcept nogil:
    """A thread thread 0 left after step t (GO_ALONE): wait, asleep after a short spin, until
    thread 0 calls it back (the step after whose end it resumes) or ends the pass (-1: leave).
    Thread 0 cannot call twice before this thread has met it again: it calls only while
    alone, and goes alone only at a barrier every thread meets; so ``calls`` is that going
    alone's episode, or one less until the call."""
    cdef int k, episode = 0
    for k in range(2):
        if pace.alone_after[k] == t:
            episode = pace.alone_episode[k]
    gk_wait_while(&pace.calls, episode - 1, &pace.sleepers)
    return pace.resume_after


cdef inline void end_pace(Pace* pace) noexcept nogil:
    """Thread 0, at the end of its pass: if it ended alone, the others leave."""
    if pace.alone:
        pace.resume_after = -1
        gk_signal(&pace.calls, &pace.sleepers)


cdef inline bint would_go_faster_alone(Pace* pace, gk_barrier* barrier, int size) noexcept nogil:
    """Whether the rest of the pass would be faster on thread 0 alone: whether the threads
    together have waited at the barriers for more than (size - 1) / 2 of the time since the
    judging began. On an idle machine they wait a few per cent of it (a step's imbalance); on a
    busy one, another thread of the call is descheduled for milliseconds at a time and every
    other thread waits for it, so that a team, which shares its CPUs with the other work, falls
    behind one thread that has a CPU of its own (the others' waits are not work: with two
    threads, waiting half the time makes the team no faster than one thread).
    Once thread 0 has been alone in the pass, it knows its time per step alone: a team called
    back is also judged by its own time per step, from its second step on, so that on a machine
    that stays busy a call back costs a few steps rather than JUDGE_AFTER_NS."""
    cdef long long elapsed = gk_now_ns() - pace.started
    if pace.started <= 0:
        return False
    if pace.alone_step_ns > 0 and pace.team_steps >= 2 and (
            elapsed > pace.alone_step_ns * pace.team_steps):
        return True
    if elapsed < JUDGE_AFTER_NS:
        return False
    return 2 * (gk_barrier_waited(barrier) - pace.waited_before) > (size - 1) * elapsed
