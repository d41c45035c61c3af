// A tiny typed event emitter.
/** Listeners by event; `on` returns the function that removes the listener. */
export class Emitter {
    constructor() {
        this.listeners = new Map();
    }
    /** Calls `fn` on every `event` until the returned function is called. */
    on(event, fn) {
        let set = this.listeners.get(event);
        if (!set) {
            set = new Set();
            this.listeners.set(event, set);
        }
        set.add(fn);
        return () => {
            set.delete(fn);
        };
    }
    /**
     * Calls the listeners of `event` in the order they were added. A listener
     * that throws does not stop the others: its error is rethrown on its own
     * (a microtask), as an uncaught error.
     */
    emit(event, ...args) {
        const set = this.listeners.get(event);
        if (!set)
            return;
        for (const fn of [...set]) {
            try {
                fn(...args);
            }
            catch (e) {
                queueMicrotask(() => {
                    throw e;
                });
            }
        }
    }
    /** Removes every listener. */
    clear() {
        this.listeners.clear();
    }
}
