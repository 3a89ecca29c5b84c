package state

// SetRefreshSlack lets a test make the cache refresh its maps often.
func SetRefreshSlack(n int) (restore func()) {
	old := refreshSlack
	refreshSlack = n
	return func() { refreshSlack = old }
}
