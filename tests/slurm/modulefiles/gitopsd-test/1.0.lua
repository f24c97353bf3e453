-- gitopsd-test/1.0: the environment module of gitopsd's Slurm tests (tests/slurm/test_slurm_launch.py).
-- It sets a variable and puts tests/slurm/modulebin on PATH, so a training can show it ran with the module.
whatis("gitopsd test module: sets GOPS_TEST_MODULE and adds tests/slurm/modulebin to PATH")
setenv("GOPS_TEST_MODULE", "1.0")
local slurm_tests = myFileName():match("(.*)/modulefiles/gitopsd%-test/[^/]*$")
prepend_path("PATH", pathJoin(slurm_tests, "modulebin"))
