//go:build !unix

package keymap

import "time"

func cpuTime() time.Duration { return 0 }
