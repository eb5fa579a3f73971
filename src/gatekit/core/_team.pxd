# The threads of one call of a compiled loop (gatekit/core/_loop.pyx, _scan.pyx, _projection.pyx):
# starting and joining them, and the judgement by which thread 0 goes on alone on a busy machine.
#
# Each loop keeps its own struct of a call and its own barriers; what they share is here. A
# threaded call must never be slower than one thread would be, on a busy machine too: when
# another process holds a core, a thread of the call is descheduled for milliseconds at a time
# and every other thread waits for it at the next barrier. So thread 0 measures those waits at
# the barriers where the loop lets it, and past a threshold (would_go_faster_alone) runs the
# rest of the pass alone, over every thread's share, while the others leave.

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
    GO_ALONE        # from here on thread 0 runs every unit and the others leave


cdef struct Pace:            # thread 0's view of the team's speed, over one pass
    long long started        # gk_now_ns() when judging began; 0 before the first judging
                             # barrier, -1 between it and the second
    long long waited_before  # the barrier's waits until then
    Py_ssize_t alone_after   # the step after whose barrier thread 0 carries on alone, or -1
    Py_ssize_t alone_at      # a step at which thread 0 goes alone whatever it measures (tests)


cdef inline void start_pace(Pace* pace, Py_ssize_t alone_at) noexcept nogil:
    pace.started, pace.waited_before, pace.alone_after, pace.alone_at = 0, 0, -1, alone_at


cdef inline StepEnd meet_at_end_of_step(Pace* pace, gk_barrier* barrier, int size,
                                        Py_ssize_t* failures, int index, Py_ssize_t t,
                                        bint failed, bint alone, bint forced) noexcept nogil:
    """Record thread ``index``'s failure at step t in ``failures`` (the step each thread saw a
    gate fail at, or -1) and meet the others at ``barrier`` (unless thread 0 is alone); say how
    the pass goes on. Before the barrier thread 0 decides whether to go alone after it, at step
    t where ``forced`` (the tests' hook), or where its waits say the team is slower."""
    cdef int m
    if failed and failures[index] < 0:
        failures[index] = t
    if alone:
        return STOP if failed else GO_ON
    if (index == 0 and not failed and pace.alone_after < 0
            and (forced or would_go_faster_alone(pace, barrier, size))):
        pace.alone_after = t        # the barrier publishes it: every thread reads it after
    gk_barrier_wait(barrier)
    if index == 0 and pace.started <= 0:
        # Judge from the second barrier on: the first also waits for the slowest thread's
        # share of what precedes the steps (and for its start), which says nothing about later
        # steps, and the others add their wait at it only after they pass it.
        if pace.started == 0:
            pace.started = -1
        else:
            pace.started, pace.waited_before = gk_now_ns(), gk_barrier_waited(barrier)
    # Only failures at step t: a thread past this barrier may already have recorded one at
    # its next step (thread 0 alone, or a member racing ahead), which the others must not
    # read as a reason to stop here, where the rest still expect them at that next barrier.
    for m in range(size):
        if failures[m] == t:
            return STOP
    return GO_ALONE if pace.alone_after == t else GO_ON


cdef inline bint would_go_faster_alone(Pace* pace, gk_barrier* barrier, int size) noexcept nogil:
    """Whether the rest of the pass would be faster on thread 0 alone: whether the threads
    together have waited at the barriers for more than (size - 1) / 2 of the time since the
    judging began. On an idle machine they wait a few per cent of it (a step's imbalance); on a
    busy one, another thread of the call is descheduled for milliseconds at a time and every
    other thread waits for it, so that a team, which shares its CPUs with the other work, falls
    behind one thread that has a CPU of its own (the others' waits are not work: with two
    threads, waiting half the time makes the team no faster than one thread)."""
    cdef long long elapsed = gk_now_ns() - pace.started
    if pace.started <= 0 or elapsed < JUDGE_AFTER_NS:
        return False
    return 2 * (gk_barrier_waited(barrier) - pace.waited_before) > (size - 1) * elapsed
